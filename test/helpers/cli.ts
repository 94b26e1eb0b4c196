import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

import { V8_FLAGS } from '../../appliance/cli/runtime.mjs';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');
export const BIN = path.join(ROOT, 'appliance', 'cli', 'holdfast.mjs');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The last stdout line parsed as JSON, when it is JSON. */
  json: any;
}

/** The holdfast command line exactly as production starts it (node + V8 flags + bin). */
export function cliArgs(args: string[]): string[] {
  return [...V8_FLAGS, BIN, ...args];
}

/** Starts holdfast (as another user when asked, as root); the caller waits with finish(). */
export function startCli(args: string[], env: Record<string, string | undefined> = {}, user: { uid?: number; gid?: number } = {}): ChildProcess {
  const merged: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) merged[k] = v;
  return spawn(process.execPath, cliArgs(args), { env: merged, stdio: ['ignore', 'pipe', 'pipe'], ...user });
}

export function finish(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString('utf8'); });
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString('utf8'); });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const last = stdout.trimEnd().split('\n').pop() ?? '';
      let json: unknown = null;
      try {
        json = JSON.parse(last);
      } catch {
        // not JSON output
      }
      resolve({ code, signal, stdout, stderr, json });
    });
  });
}

/** Runs holdfast to the end. An env value of undefined removes the variable. */
export function cli(args: string[], env: Record<string, string | undefined> = {}, user: { uid?: number; gid?: number } = {}): Promise<CliResult> {
  return finish(startCli(args, env, user));
}
