import { Hasher } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { type ReplicatedType, contentAddressed } from '../protocol/index.ts';
import type { LocalStorage } from '../storage/index.ts';
import { listRemote } from './replicator.ts';
import type { TargetClient } from './target-client.ts';

export interface CloneResult {
  files: number;
  bytes: number;
  present: number;
  seconds: number;
  store: string;
  tenant: string;
}

/** Write order of a repository: nothing arrives before what it references. */
const ORDER: ReplicatedType[] = ['config', 'key', 'pack', 'index', 'snapshot'];

/**
 * Rebuilds a local repository from a store (the disaster case): every file
 * of the tenant is fetched in write order, checked against its name where
 * the name is its digest, and written durably (LocalStorage). Files already
 * there with the right size are kept, so an interrupted clone resumes.
 * The caller has initialised dest (or it holds an earlier clone's files).
 */
export async function cloneRepository(client: TargetClient, dest: LocalStorage,
  options: { signal?: AbortSignal; concurrency?: number; onFile?: (type: ReplicatedType, name: string, size: number) => void } = {}): Promise<CloneResult> {
  const started = performance.now();
  const welcome = (await client.connection()).welcome;
  let files = 0;
  let bytes = 0;
  let present = 0;
  for (const type of ORDER) {
    const remote = await client.run((c) => listRemote(c, type));
    if (type === 'config' && remote.length === 0) {
      throw new HoldfastError('HF_STORE_TENANT_NOT_FOUND',
        `store ${welcome.store} holds no repository for tenant ${welcome.tenant} (no config file); check that this certificate is the one the old appliance replicated with`);
    }
    const local = new Map((await dest.list(type)).map((f) => [f.name, f.size]));
    const todo = remote.filter((f) => {
      if (local.get(f.name) === f.size) {
        present++;
        return false;
      }
      return true;
    });
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const f = todo[next++]!;
        options.signal?.throwIfAborted();
        await client.run(async (c) => {
          const w = await dest.create(type);
          const hasher = new Hasher();
          let got = 0;
          try {
            for await (const parts of c.get(type, f.name)) {
              // one DATA frame, as the socket's pieces: hashed and written in turn, never joined
              await Promise.all([hasher.update(parts), w.write(parts)]);
              for (const p of parts) got += p.length;
            }
            if (got !== f.size) throw new HoldfastError('HF_IO', `${type} ${f.name}: got ${got} bytes of ${f.size}`);
            const digest = hasher.digest().toString('hex');
            if (contentAddressed(type) && digest !== f.name) {
              throw new HoldfastError('HF_PACK_CORRUPT', `${type} ${f.name.slice(0, 16)} from store ${welcome.store} does not hash to its name (got ${digest.slice(0, 16)}…); the store's copy is damaged`);
            }
            await w.commit(f.name);
          } catch (err) {
            await w.abort();
            throw err;
          }
        });
        files++;
        bytes += f.size;
        options.onFile?.(type, f.name, f.size);
      }
    };
    await Promise.all(Array.from({ length: type === 'pack' ? (options.concurrency ?? 4) : 1 }, worker));
  }
  return { files, bytes, present, seconds: (performance.now() - started) / 1000, store: welcome.store, tenant: welcome.tenant };
}
