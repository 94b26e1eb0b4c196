import { createHash } from 'node:crypto';

import { HoldfastError, errorCode } from '../errors/index.ts';
import { forEachLimit } from '../limits/index.ts';
import { MAX_HAVE, MAX_LIST, type HaveState, type ReplicatedType, contentAddressed } from '../protocol/index.ts';
import type { Storage } from '../storage/index.ts';
import type { Limiter, StoreConnection } from './store-connection.ts';
import type { TargetClient } from './target-client.ts';

export interface LocalFile {
  type: ReplicatedType;
  name: string;
  size: number;
  digest: string;
}

export interface ReplicationProgress {
  phase: 'comparing' | 'sending' | 'deleting';
  files: number;
  filesTotal: number;
  bytes: number;
  bytesTotal: number;
}

export interface ReplicateOptions {
  limiter?: Limiter;
  /** Largest DATA frame while a rate applies (so that no second carries much more than the rate). */
  frameCap?: () => number;
  /** Uploads in flight on the connection. */
  concurrency?: number;
  signal?: AbortSignal;
  /** Mirror deletions (soft, at the store) of files the repository no longer has. Default true. */
  deletes?: boolean;
  onProgress?: (p: ReplicationProgress) => void;
}

export interface ReplicationResult {
  store: string;
  tenant: string;
  /** Files the repository has / the store already held / sent in this run. */
  files: number;
  present: number;
  sentFiles: number;
  /** Bytes of the files sent, bytes actually sent (DATA payload), bytes not resent thanks to partial files. */
  bytes: number;
  sent: number;
  resumed: number;
  deleted: number;
  /** Files that vanished from the repository during the run (prune). */
  vanished: number;
  endpoints: string[];
  failovers: number;
  seconds: number;
  /** Every file of the repository the store holds at the end: "type/name". */
  confirmed: string[];
}

/** Order in which a repository's files are sent (DESIGN "Write order"): nothing listed before what it references. */
const PHASES: ReplicatedType[][] = [['config', 'key', 'pack'], ['index'], ['snapshot']];
/** Deletions go the other way: snapshots first, packs last. Config is never deleted. */
const DELETE_ORDER: ReplicatedType[] = ['snapshot', 'index', 'pack', 'key'];

/** The repository's files that replication moves, with their digests. */
export async function localFiles(storage: Storage): Promise<LocalFile[]> {
  const out: LocalFile[] = [];
  for (const type of ['config', 'key', 'pack', 'index', 'snapshot'] as const) {
    for (const f of await storage.list(type)) {
      if (contentAddressed(type)) {
        out.push({ type, name: f.name, size: f.size, digest: f.name });
      } else {
        const bytes = await storage.load(type, f.name).catch((err: unknown) => {
          if (errorCode(err) === 'HF_STORAGE_NOT_FOUND') return null;
          throw err;
        });
        if (bytes) out.push({ type, name: f.name, size: bytes.length, digest: createHash('sha256').update(bytes).digest('hex') });
      }
    }
  }
  return out;
}

export const fileKey = (f: { type: string; name: string }): string => `${f.type}/${f.name}`;

/** Asks the store about files, in batches. */
export async function have(conn: StoreConnection, files: readonly LocalFile[]): Promise<HaveState[]> {
  const out: HaveState[] = [];
  for (let i = 0; i < files.length; i += MAX_HAVE) {
    const batch = files.slice(i, i + MAX_HAVE);
    const r = await conn.request({ op: 'HAVE', files: batch.map((f) => ({ type: f.type, name: f.name, digest: f.digest })) });
    const states = r.files;
    if (!Array.isArray(states) || states.length !== batch.length) throw new HoldfastError('HF_PROTO_MALFORMED', 'a malformed HAVE answer');
    for (const s of states as HaveState[]) {
      if (s?.state === 'complete' && Number.isSafeInteger(s.size)) out.push({ state: 'complete', size: s.size });
      else if (s?.state === 'partial' && Number.isSafeInteger(s.offset) && s.offset >= 0) out.push({ state: 'partial', offset: s.offset });
      else out.push({ state: 'absent' });
    }
  }
  return out;
}

/** Every complete file of a type on the store (LIST, paged). */
export async function listRemote(conn: StoreConnection, type: ReplicatedType): Promise<{ name: string; size: number }[]> {
  const out: { name: string; size: number }[] = [];
  let after: string | undefined;
  for (;;) {
    const r = await conn.request({ op: 'LIST', type, limit: MAX_LIST, ...(after !== undefined ? { after } : {}) });
    const files = r.files;
    if (!Array.isArray(files)) throw new HoldfastError('HF_PROTO_MALFORMED', 'a malformed LIST answer');
    for (const f of files as { name?: unknown; size?: unknown }[]) {
      if (typeof f?.name !== 'string' || typeof f.size !== 'number') throw new HoldfastError('HF_PROTO_MALFORMED', 'a malformed LIST entry');
      out.push({ name: f.name, size: f.size });
    }
    if (r.more !== true || files.length === 0) return out;
    after = out.at(-1)!.name;
  }
}

/**
 * Sends a target what it lacks of a repository (docs/PROTOCOL.md): HAVE in
 * batches, then PUT of what is missing, resuming partial files at the
 * store's offset; packs (and config, keys) first, then index files, then
 * snapshots, so the store's copy is a valid repository at every moment.
 * Then deletes (softly, at the store) what the repository no longer has, in
 * the reverse order. A connection lost on the way moves to the next
 * endpoint (TargetClient) and the remaining work is asked about again:
 * nothing the store acknowledged is sent again.
 */
export async function replicate(storage: Storage, client: TargetClient, options: ReplicateOptions = {}): Promise<ReplicationResult> {
  const started = performance.now();
  const signal = options.signal;
  const files = await localFiles(storage);
  const total = files.reduce((s, f) => s + f.size, 0);
  const done = new Set<string>();
  const gone = new Set<string>();
  let present = 0;
  let sentFiles = 0;
  let bytes = 0;
  let resumed = 0;
  let vanished = 0;
  let progressBytes = 0;
  const progress = (phase: ReplicationProgress['phase']) => options.onProgress?.({
    phase, files: done.size, filesTotal: files.length, bytes: progressBytes, bytesTotal: total,
  });
  const welcome = (await client.connection()).welcome;

  for (const phase of PHASES) {
    const todo = files.filter((f) => phase.includes(f.type));
    await client.run(async (conn) => {
      signal?.throwIfAborted();
      const remaining = todo.filter((f) => !done.has(fileKey(f)));
      progress('comparing');
      const states = await have(conn, remaining);
      const send: { file: LocalFile; offset: number }[] = [];
      remaining.forEach((f, i) => {
        const s = states[i]!;
        if (s.state === 'complete') {
          if (s.size !== f.size) {
            throw new HoldfastError('HF_STORE_EXISTS', `${f.type} ${f.name.slice(0, 16)}: the store holds ${s.size} bytes, the repository ${f.size}`);
          }
          done.add(fileKey(f));
          present++;
          progressBytes += f.size;
        } else {
          send.push({ file: f, offset: s.state === 'partial' ? Math.min(s.offset, f.size) : 0 });
        }
      });
      progress('sending');
      await forEachLimit(send, options.concurrency ?? 4, async ({ file, offset }) => {
        if (conn.closed) throw new HoldfastError('HF_TARGET_UNREACHABLE', 'connection lost', {});
        let r: { start: number; sent: number; existed: boolean } | null = null;
        try {
          // A file another connection is still uploading (HF_STORE_BUSY: a front-end that is dying,
          // or one killed whose claim on an S3 upload lapses after its lease, 15 s by default) is
          // asked for again for up to a minute; bytes the store rejected (digest) are sent once more from 0.
          for (let attempt = 0, from = offset; r === null; attempt++) {
            try {
              r = await conn.put(file, from, async (pos, into) => {
                await storage.load(file.type, file.name, pos, into.length, into);
                progressBytes += into.length;
                progress('sending');
              }, options.limiter, signal, options.frameCap?.());
            } catch (err) {
              const code = errorCode(err);
              if (code === 'HF_STORE_BUSY' && attempt < 30) await new Promise((resolve) => setTimeout(resolve, 2000));
              else if (code === 'HF_STORE_DIGEST_MISMATCH' && attempt < 1) from = 0;
              else throw err;
            }
          }
        } catch (err) {
          if (errorCode(err) === 'HF_STORAGE_NOT_FOUND') {
            vanished++; // pruned while we worked: nothing to send, and nothing the store needs
            gone.add(fileKey(file));
            done.add(fileKey(file));
            return;
          }
          throw err;
        }
        if (r!.existed) {
          present++;
        } else {
          resumed += r!.start;
          bytes += file.size;
          sentFiles++;
        }
        done.add(fileKey(file));
      });
    });
  }

  let deleted = 0;
  if (options.deletes !== false) {
    const local = new Set(files.map(fileKey));
    progress('deleting');
    await client.run(async (conn) => {
      for (const type of DELETE_ORDER) {
        for (const f of await listRemote(conn, type)) {
          if (local.has(`${type}/${f.name}`) && !gone.has(`${type}/${f.name}`)) continue;
          // Still in the repository (a file written since the run began) is never deleted;
          // and only a file the repository positively lacks is (an I/O error stops the run).
          const present = await storage.stat(type, f.name).then(() => true, (err: unknown) => {
            if (errorCode(err) === 'HF_STORAGE_NOT_FOUND') return false;
            throw err;
          });
          if (present) continue;
          await conn.request({ op: 'DELETE', type, name: f.name });
          deleted++;
        }
      }
    });
  }
  progress('deleting');
  return {
    store: welcome.store, tenant: welcome.tenant, files: files.length, present, sentFiles, bytes, sent: client.dataSent, resumed, deleted, vanished,
    endpoints: [...client.used], failovers: client.failovers, seconds: (performance.now() - started) / 1000,
    confirmed: files.map(fileKey).filter((k) => done.has(k) && !gone.has(k)),
  };
}
