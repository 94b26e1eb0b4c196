// Job workers: each running job is a child process of the engine
// (`holdfast.mjs _job-worker`), so that a backup's chunking, sealing and
// tree building never share the engine's event loop or threadpool with the
// API. The console stays quick while a backup uses every core; the worker
// runs at a lower CPU priority (nice 10) so that it yields to the API.
//
// The channel is Node's IPC pipe (structured clone). The engine sends
// { start } with the repository's location and passphrase and the job's
// WorkSpec, later perhaps { cancel }; the worker sends { progress } now and
// then and one { done } or { failed }, then exits. A worker whose engine
// goes away (the pipe closes: the engine was killed) exits at once, as if
// killed with it: the job resumes when the engine starts again.
import { fork } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import type { Logger } from 'pino';

import { V8_FLAGS } from '../cli/runtime.mjs';
import { type ErrorCode, HoldfastError, errorCode } from '../errors/index.ts';
import { Repository, processStart } from '../repository/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { type WorkSpec, work } from './job-work.ts';

/** The worker's CPU priority: below the engine and the console (0). */
export const WORKER_NICE = 10;
/** A cancelled worker that has not ended after this long is killed (SIGKILL); its job is left as a kill leaves it. */
const CANCEL_GRACE_MS = 60_000;
/** A worker that said how its job ended and has not exited after this long is killed. */
const EXIT_GRACE_MS = 10_000;

const ENTRY = fileURLToPath(new URL('../cli/holdfast.mjs', import.meta.url));
export const WORKER_ARG = '_job-worker';

export interface WorkerStart {
  type: 'start';
  job: number | null;
  repo: { dir: string; password: string };
  spec: WorkSpec;
}

/** Whom a worker works for: a job (its id), or the engine itself (null: catalog catch-up). */
export interface WorkerContext {
  job: number | null;
  signal: AbortSignal;
  progress(p: Record<string, unknown>): void;
  log: Logger;
}

type ToWorker = WorkerStart | { type: 'cancel'; message: string };
type FromWorker =
  | { type: 'progress'; progress: Record<string, unknown> }
  | { type: 'done'; result: Record<string, unknown> }
  | { type: 'failed'; error: { code: string; message: string; details?: Record<string, unknown> } };

/**
 * Runs spec in a new worker process on behalf of ctx.job: its
 * progress goes to ctx.progress, ctx.signal cancels it (the worker stops as
 * the job would have: HF_INTERRUPTED). Resolves with the job's result;
 * rejects with the job's coded error, or HF_WORKER_FAILED when the worker
 * died without saying how the job ended.
 */
export function runInWorker(repo: { dir: string; password: string }, spec: WorkSpec, ctx: WorkerContext, workersDir: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = fork(ENTRY, [WORKER_ARG], {
      execArgv: [...V8_FLAGS],
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let outcome: FromWorker | null = null;
    let spawnError: Error | null = null;
    const send = (m: ToWorker) => {
      if (child.connected) child.send(m, (err) => { if (err) ctx.log.warn({ err }, 'cannot reach the job worker'); });
    };
    let killTimer: NodeJS.Timeout | null = null;
    const killAfter = (ms: number) => {
      killTimer ??= setTimeout(() => {
        ctx.log.warn({ pid: child.pid, job: ctx.job }, 'the job worker did not end in time: killing it');
        child.kill('SIGKILL');
      }, ms);
    };
    const onAbort = () => {
      const reason = ctx.signal.reason as unknown;
      send({ type: 'cancel', message: reason instanceof Error ? reason.message : 'cancelled' });
      killAfter(CANCEL_GRACE_MS);
    };
    const pidFile = child.pid !== undefined ? path.join(workersDir, String(child.pid)) : null;
    child.once('spawn', () => {
      if (pidFile) {
        try {
          fs.mkdirSync(workersDir, { recursive: true, mode: 0o700 });
          // what it is, and its /proc start time: a reused pid is never taken for it
          fs.writeFileSync(pidFile, `${JSON.stringify({ job: ctx.job, kind: spec.kind, start: child.pid !== undefined ? processStart(child.pid) : null })}\n`);
        } catch (err) {
          ctx.log.warn({ err }, 'cannot record the job worker\'s pid');
        }
      }
      try {
        if (child.pid !== undefined) os.setPriority(child.pid, WORKER_NICE);
      } catch (err) {
        ctx.log.warn({ err }, 'cannot lower the job worker\'s priority; it runs at the engine\'s');
      }
      send({ type: 'start', job: ctx.job, repo, spec });
      if (ctx.signal.aborted) onAbort();
      else ctx.signal.addEventListener('abort', onAbort, { once: true });
    });
    child.on('message', (m: FromWorker) => {
      if (m.type === 'progress') ctx.progress(m.progress);
      else {
        outcome = m;
        killAfter(EXIT_GRACE_MS);
      }
    });
    child.once('error', (err) => { spawnError = err; });
    // 'close', not 'exit': it comes after the IPC channel closed, so after the last message
    child.once('close', (code, signal) => {
      ctx.signal.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      try {
        if (pidFile) fs.rmSync(pidFile, { force: true });
      } catch (err) {
        ctx.log.warn({ err }, 'cannot remove the job worker\'s pid file');
      }
      const o = outcome as FromWorker | null;
      if (o?.type === 'done') return resolve(o.result);
      if (o?.type === 'failed') {
        return reject(new HoldfastError(o.error.code as ErrorCode, o.error.message, o.error.details ? { details: o.error.details } : undefined));
      }
      reject(new HoldfastError('HF_WORKER_FAILED',
        `the job's worker process ${spawnError ? `could not start (${spawnError.message})` : `ended (${signal ?? `exit code ${code}`}) before the job finished`}; ` +
        'what it stored is kept; run the job again, and if this repeats, see the engine\'s log', { details: { exitCode: code, signal } }));
    });
  });
}

/**
 * Stops job workers a previous engine left behind (it was killed; they exit
 * when they notice, but may still hold the repository's lock): each pid
 * recorded in workersDir that is still a job worker gets SIGKILL, and is
 * waited for (up to 10 s). Returns the pids stopped.
 */
export async function reapWorkers(workersDir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await fsp.readdir(workersDir);
  } catch {
    return [];
  }
  const stopped: number[] = [];
  for (const name of names) {
    const pid = Number(name);
    let recorded: string | null = null;
    try {
      recorded = (JSON.parse(await fsp.readFile(path.join(workersDir, name), 'utf8')) as { start?: string | null }).start ?? null;
    } catch {
      // unreadable: only the command line is checked
    }
    const isWorker = () => {
      try {
        // the same process (its start time), and a job worker (its command line)
        if (recorded !== null && processStart(pid) !== recorded) return false;
        return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(WORKER_ARG);
      } catch {
        return false; // gone (or not Linux: then nothing is killed on a guess)
      }
    };
    if (Number.isInteger(pid) && pid > 1 && isWorker()) {
      try {
        process.kill(pid, 'SIGKILL');
        stopped.push(pid);
      } catch {
        // ended meanwhile, or not ours to kill
      }
      for (let i = 0; i < 200 && isWorker(); i++) await sleep(50);
    }
    await fsp.rm(path.join(workersDir, name), { force: true });
  }
  return stopped;
}

/** The worker process's side: waits for { start }, runs the job, reports, exits. */
export async function workerMain(): Promise<number> {
  if (!process.send) {
    process.stderr.write(`${WORKER_ARG} is started by holdfast-engine, not by hand\n`);
    return 2;
  }
  const abort = new AbortController();
  // The engine went away (killed, crashed): stop now, as a killed job would.
  const orphaned = () => process.exit(70);
  process.once('disconnect', orphaned);
  // Ctrl-C reaches the whole process group, and systemd (without
  // KillMode=mixed) the whole unit: the engine decides, and cancels the job
  // if it stops; a worker stopping on its own would look like a failed job.
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, () => undefined);
  const start = await new Promise<WorkerStart>((resolve) => {
    process.on('message', (m: ToWorker) => {
      if (m.type === 'start') resolve(m);
      else if (m.type === 'cancel') abort.abort(new HoldfastError('HF_INTERRUPTED', m.message));
    });
  });
  const tell = (m: FromWorker) => new Promise<void>((resolve) => {
    if (!process.connected) return resolve();
    try {
      process.send!(m, undefined, {}, () => resolve());
    } catch (err) {
      // not cloneable (never expected): say so rather than nothing
      process.send!({ type: 'failed', error: { code: 'HF_WORKER_FAILED', message: `the job's outcome could not be sent: ${(err as Error).message}` } }, undefined, {}, () => resolve());
    }
  });
  let repo: Repository | null = null;
  try {
    repo = await Repository.open(new LocalStorage(start.repo.dir), { password: start.repo.password });
    const result = await work(start.spec, {
      repo, signal: abort.signal,
      progress: (progress) => { if (process.connected) process.send!({ type: 'progress', progress }); },
    });
    await tell({ type: 'done', result });
  } catch (err) {
    const details = err instanceof HoldfastError ? err.details : undefined;
    await tell({
      type: 'failed',
      error: { code: errorCode(err) ?? 'HF_IO', message: err instanceof Error ? err.message : String(err), ...(details ? { details } : {}) },
    });
  } finally {
    await repo?.close().catch(() => undefined);
  }
  process.off('disconnect', orphaned);
  process.disconnect?.();
  return 0;
}
