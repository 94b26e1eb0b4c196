import { execFile } from 'node:child_process';
import path from 'node:path';

import { HoldfastError } from '../errors/index.ts';

/**
 * How the agent restarts the appliance's services after switching releases
 * and learns that they came up. The box's is systemd; tests give their own
 * supervisor (which also runs the release's engine and waits for its
 * sd_notify READY).
 */
export interface ServiceManager {
  /**
   * Restarts the engine and the console on the release `current` points to;
   * resolves once each has reported READY, rejects with HF_UPDATE_FAILED when
   * one fails to start or `timeoutMs` passes first.
   */
  restart(timeoutMs: number): Promise<void>;
  /** Restarts the agent itself on the current release (after a successful update). */
  restartAgent(): Promise<void>;
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 124) : 0;
      resolve({ code, out: `${stdout}${stderr}`.trim() });
    });
  });
}

export const APPLIANCE_UNITS = ['holdfast-engine.service', 'holdfast-console.service'];

/**
 * systemd: `systemctl restart` waits for a Type=notify unit's READY=1 (or
 * its failure); then each unit must be active. The agent restarts itself
 * with --no-block (systemd stops it and starts the new release's agent).
 */
export class SystemdServices implements ServiceManager {
  readonly units: readonly string[];

  constructor(units: readonly string[] = APPLIANCE_UNITS) {
    this.units = units;
  }

  async restart(timeoutMs: number): Promise<void> {
    const r = await run('systemctl', ['restart', ...this.units], timeoutMs);
    if (r.code !== 0) {
      throw new HoldfastError('HF_UPDATE_FAILED', r.code === 124
        ? `the services did not report READY within ${Math.round(timeoutMs / 1000)} s`
        : `systemctl restart failed (${r.code}): ${r.out.slice(0, 500)}`);
    }
    for (const u of this.units) {
      const s = await run('systemctl', ['is-active', u], 10_000);
      if (s.out !== 'active') throw new HoldfastError('HF_UPDATE_FAILED', `${u} is ${s.out || 'not active'} after the restart`);
    }
  }

  async restartAgent(): Promise<void> {
    await run('systemctl', ['restart', '--no-block', 'holdfast-agent.service'], 10_000);
  }
}

/**
 * The release's self-test, run with the release's own runtime:
 * `bin/node appliance/cli/holdfast.mjs self-test`, within `timeoutMs`.
 * Rejects with HF_UPDATE_FAILED and what the self-test printed.
 */
export async function runSelfTest(releaseDir: string, args: string[], timeoutMs: number): Promise<string> {
  const r = await run(path.join(releaseDir, 'bin', 'node'), [path.join(releaseDir, 'appliance', 'cli', 'holdfast.mjs'), 'self-test', ...args], timeoutMs);
  if (r.code !== 0) {
    throw new HoldfastError('HF_UPDATE_FAILED', r.code === 124 ? `the self-test did not finish within ${Math.round(timeoutMs / 1000)} s` : `the self-test failed: ${r.out.slice(-800)}`);
  }
  return r.out;
}
