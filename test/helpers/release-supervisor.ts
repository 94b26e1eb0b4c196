import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import type { Test } from 'tap';

import type { ServiceManager } from '../../appliance/agent/index.ts';
import { V8_FLAGS } from '../../appliance/cli/runtime.mjs';
import { HoldfastError } from '../../appliance/errors/index.ts';
import { notifyListener } from './notify-listener.ts';

/**
 * The test's stand-in for systemd on a box: runs the engine of the release
 * `INSTALL_ROOT/current` points to, with that release's own runtime, and
 * takes READY=1 from the engine's pid on a real notify socket (sd_notify),
 * as a Type=notify unit would. A restart that sees no READY within its
 * time limit kills the process and fails, like systemd's start timeout.
 */
export class ReleaseSupervisor implements ServiceManager {
  readonly root: string;
  readonly dataDir: string;
  readonly #socket: string;
  readonly #messages: () => { pid: number; text: string }[];
  readonly ready: Promise<void>;
  engine: ChildProcess | null = null;
  /** Engines started, in order, with the release each ran and whether it became READY. */
  readonly starts: { pid: number; release: string; ready: boolean }[] = [];
  agentRestarts = 0;

  constructor(t: Test, o: { root: string; dataDir: string; dir: string }) {
    this.root = o.root;
    this.dataDir = o.dataDir;
    fs.mkdirSync(o.dir, { recursive: true });
    this.#socket = path.join(o.dir, 'notify.sock');
    const l = notifyListener(t, this.#socket);
    this.#messages = l.messages;
    this.ready = l.ready;
    t.teardown(() => this.stop());
  }

  async restart(timeoutMs: number): Promise<void> {
    await this.stop();
    const release = fs.realpathSync(path.join(this.root, 'current'));
    const child = spawn(path.join(release, 'bin', 'node'), [...V8_FLAGS, path.join(release, 'appliance', 'cli', 'holdfast.mjs'), 'engine', '--data-dir', this.dataDir],
      { env: { ...process.env, NOTIFY_SOCKET: this.#socket }, stdio: ['ignore', 'ignore', 'pipe'] });
    this.engine = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000); });
    const start = { pid: child.pid!, release: path.basename(release), ready: false };
    this.starts.push(start);
    const end = Date.now() + timeoutMs;
    while (!this.#messages().some((m) => m.pid === child.pid && m.text.split('\n').includes('READY=1'))) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new HoldfastError('HF_UPDATE_FAILED', `holdfast-engine (${start.release}) exited with ${child.exitCode ?? child.signalCode} before READY: ${stderr.trim().slice(-300)}`);
      }
      if (Date.now() > end) {
        await this.stop();
        throw new HoldfastError('HF_UPDATE_FAILED', `holdfast-engine (${start.release}) did not report READY within ${Math.round(timeoutMs / 1000)} s`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    start.ready = true;
  }

  async stop(): Promise<void> {
    const c = this.engine;
    this.engine = null;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM');
    await new Promise<void>((resolve) => {
      const k = setTimeout(() => { c.kill('SIGKILL'); }, 15_000);
      c.once('exit', () => { clearTimeout(k); resolve(); });
    });
  }

  async restartAgent(): Promise<void> {
    this.agentRestarts++;
  }
}
