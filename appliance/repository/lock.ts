import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';

import { HoldfastError, hasCode } from '../errors/index.ts';
import type { Storage } from '../storage/index.ts';

/**
 * Repository locks (docs/DESIGN.md, "Locks").
 *  - shared:    readers (restore, ls, check). Coexist with an append writer.
 *  - append:    one writer that only adds (backup, forget). Excludes other writers.
 *  - exclusive: prune. Excludes writers and readers.
 * The writer holds the file `locks/writer`, created atomically; readers hold
 * `locks/reader-<random>`. Each side creates its own file first and then looks
 * for the other, so at least one of two racing processes sees the conflict.
 */
export type LockMode = 'shared' | 'append' | 'exclusive';

export interface LockInfo {
  mode: LockMode;
  host: string;
  pid: number;
  /** /proc start time of pid, to tell a live holder from a reused pid. */
  pidStart: string | null;
  user: string;
  command: string;
  time: string;
}

/** Holders rewrite their lock this often; a lock from another host older than STALE_AFTER_MS is stale. */
export const REFRESH_MS = 5 * 60_000;
export const STALE_AFTER_MS = 30 * 60_000;

const WRITER = 'writer';

/** The start time of a running process (from /proc), or null when none runs under that pid. */
export function processStart(pid: number): string | null {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = fields.slice(fields.lastIndexOf(')') + 2).split(' ');
    // A zombie (Z) or dead (X) process holds nothing: it ended, and its
    // parent (gone too, or not reaping) has not collected it yet.
    if (f[0] === 'Z' || f[0] === 'X') return null;
    return f[19] ?? null;
  } catch {
    return null;
  }
}

/** Whether a lock's holder is certainly gone. */
export function isStale(info: LockInfo, now = Date.now()): boolean {
  if (info.host === os.hostname()) {
    const start = processStart(info.pid);
    if (start === null) return true;
    return info.pidStart !== null && start !== info.pidStart;
  }
  const t = Date.parse(info.time);
  return !Number.isFinite(t) || now - t > STALE_AFTER_MS;
}

function describe(info: LockInfo, location: string): string {
  return `repository ${location} is locked (${info.mode}) by \`${info.command}\` (pid ${info.pid} on ${info.host}, ` +
    `user ${info.user}) since ${info.time}. Wait for it to finish; if that process is gone, ` +
    `run \`holdfast unlock --repo ${location}\``;
}

async function readLock(storage: Storage, name: string): Promise<LockInfo | null> {
  try {
    const info = JSON.parse((await storage.load('lock', name)).toString('utf8')) as LockInfo;
    if (typeof info?.pid !== 'number' || typeof info.host !== 'string') throw new Error('malformed');
    return info;
  } catch (err) {
    if (hasCode(err, 'HF_STORAGE_NOT_FOUND')) return null;
    // An unreadable lock file (torn by a crash on a filesystem without atomic
    // rename) is treated as stale with an unknown holder.
    return { mode: 'exclusive', host: '?', pid: 0, pidStart: null, user: '?', command: '?', time: 'unknown' };
  }
}

export class Lock {
  readonly mode: LockMode;
  readonly #storage: Storage;
  readonly #name: string;
  readonly #info: LockInfo;
  #timer: NodeJS.Timeout | null = null;
  #released = false;

  private constructor(storage: Storage, name: string, info: LockInfo) {
    this.#storage = storage;
    this.#name = name;
    this.#info = info;
    this.mode = info.mode;
  }

  static async acquire(storage: Storage, mode: LockMode, command: string): Promise<Lock> {
    const info: LockInfo = {
      mode,
      host: os.hostname(),
      pid: process.pid,
      pidStart: processStart(process.pid),
      user: os.userInfo().username,
      command,
      time: new Date().toISOString(),
    };
    const body = () => Buffer.from(JSON.stringify(info));
    if (mode === 'shared') {
      const name = `reader-${randomBytes(8).toString('hex')}`;
      await storage.save('lock', name, [body()], { exclusive: true });
      const writer = await readLock(storage, WRITER);
      if (writer && isStale(writer)) {
        await storage.remove('lock', WRITER);
      } else if (writer && writer.mode === 'exclusive') {
        await storage.remove('lock', name);
        throw new HoldfastError('HF_REPO_LOCKED', describe(writer, storage.location));
      }
      return new Lock(storage, name, info).#startRefresh();
    }
    for (let attempt = 0; ; attempt++) {
      try {
        await storage.save('lock', WRITER, [body()], { exclusive: true });
        break;
      } catch (err) {
        if (!hasCode(err, 'HF_STORAGE_EXISTS')) throw err;
        const holder = await readLock(storage, WRITER);
        if (attempt < 3 && (!holder || isStale(holder))) {
          if (holder) await storage.remove('lock', WRITER);
          continue;
        }
        throw new HoldfastError('HF_REPO_LOCKED', describe(holder ?? info, storage.location), { cause: err });
      }
    }
    const lock = new Lock(storage, WRITER, info);
    if (mode === 'exclusive') {
      for (const f of await storage.list('lock')) {
        if (!f.name.startsWith('reader-')) continue;
        const reader = await readLock(storage, f.name);
        if (!reader) continue;
        if (isStale(reader)) {
          await storage.remove('lock', f.name);
          continue;
        }
        await lock.release();
        throw new HoldfastError('HF_REPO_LOCKED', describe(reader, storage.location));
      }
    }
    return lock.#startRefresh();
  }

  #startRefresh(): this {
    this.#timer = setInterval(() => {
      this.#info.time = new Date().toISOString();
      this.#storage.save('lock', this.#name, [Buffer.from(JSON.stringify(this.#info))]).catch(() => undefined);
    }, REFRESH_MS);
    this.#timer.unref();
    return this;
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#storage.remove('lock', this.#name);
  }
}

/** Removes stale locks (or all, when force). Returns what was removed. */
export async function removeLocks(storage: Storage, force: boolean): Promise<LockInfo[]> {
  const removed: LockInfo[] = [];
  for (const f of await storage.list('lock')) {
    const info = await readLock(storage, f.name);
    if (info && (force || isStale(info))) {
      await storage.remove('lock', f.name);
      removed.push(info);
    }
  }
  return removed;
}
