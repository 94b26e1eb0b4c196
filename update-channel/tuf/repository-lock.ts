import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../../appliance/errors/index.ts';

/** `repoDir/.lock`: held while an operation changes metadata. */
export const LOCK_FILE = '.lock';

interface LockInfo {
  pid: number;
  host: string;
  operation: string;
  time: string;
}

/** Operations of this process, per repository, run one after the other (the server's timer and a publish). */
const queues = new Map<string, Promise<unknown>>();

/**
 * Runs fn holding the repository's lock. Within a process, callers queue;
 * across processes the lock is `repoDir/.lock`, created exclusively: when
 * another live process holds it this is HF_REPO_LOCKED naming the holder (a
 * timestamp refresh simply tries again at its next tick). A lock left by a
 * process of this host that is gone is taken over.
 *
 * Without it a timer's refreshTimestamp racing a publish could write a
 * timestamp of the same version pointing at the older snapshot: boxes that
 * saw the newer one would then see a rollback.
 */
export async function withRepositoryLock<T>(repoDir: string, operation: string, fn: () => Promise<T>): Promise<T> {
  const key = path.resolve(repoDir);
  const before = queues.get(key) ?? Promise.resolve();
  const run = before.catch(() => undefined).then(async () => {
    const file = path.join(key, LOCK_FILE);
    await acquire(file, operation);
    try {
      return await fn();
    } finally {
      await fsp.unlink(file).catch(() => undefined);
    }
  });
  queues.set(key, run);
  try {
    return await run;
  } finally {
    if (queues.get(key) === run) queues.delete(key);
  }
}

async function acquire(file: string, operation: string): Promise<void> {
  const info: LockInfo = { pid: process.pid, host: os.hostname(), operation, time: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    try {
      await fsp.writeFile(file, `${JSON.stringify(info)}\n`, { flag: 'wx', mode: 0o600 });
      return;
    } catch (err) {
      if (errorCode(err) === 'ENOENT') {
        throw new HoldfastError('HF_REPO_NOT_FOUND', `there is no TUF repository at ${path.dirname(file)}: run initTufRepository first`, { cause: err });
      }
      if (errorCode(err) !== 'EEXIST') throw ioError(`cannot create lock ${file}`, err);
    }
    const holder = await readLock(file);
    if (attempt === 0 && holder && holder.host === os.hostname() && !alive(holder.pid)) {
      await fsp.unlink(file).catch(() => undefined);
      continue;
    }
    const who = holder ? `\`${holder.operation}\` (pid ${holder.pid} on ${holder.host}) since ${holder.time}` : 'an unknown process';
    throw new HoldfastError('HF_REPO_LOCKED',
      `TUF repository ${path.dirname(file)} is locked by ${who}: wait for it to finish; if that process is gone, delete ${file}`,
      { details: holder ? { ...holder } : undefined });
  }
}

async function readLock(file: string): Promise<LockInfo | null> {
  try {
    const info = JSON.parse(await fsp.readFile(file, 'utf8')) as LockInfo;
    return typeof info?.pid === 'number' && typeof info.host === 'string' ? info : null;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errorCode(err) === 'EPERM';
  }
}
