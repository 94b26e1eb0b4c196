import fsp from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { REPLICATED_TYPES, type ReplicatedType, contentAddressed } from '../protocol/index.ts';
import { filePath, validName } from '../storage/index.ts';
import type { StoreBackend } from './store-backend.ts';

export const SEED_MANIFEST = 'holdfast-seed.json';
const PIECE = 8 << 20;

export interface SeedEntry {
  type: ReplicatedType;
  name: string;
  size: number;
  digest: string;
}

/** Reads and validates a seed's manifest (written by `holdfast seed export`). */
export async function readSeedManifest(dir: string): Promise<SeedEntry[]> {
  let raw: string;
  try {
    raw = await fsp.readFile(path.join(dir, SEED_MANIFEST), 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `${dir} holds no ${SEED_MANIFEST}: is it a disk written by \`holdfast seed export\`?`, { cause: err });
    }
    throw ioError(`cannot read the seed at ${dir}`, err);
  }
  let m: { magic?: unknown; version?: unknown; files?: unknown };
  try {
    m = JSON.parse(raw) as typeof m;
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT', `${path.join(dir, SEED_MANIFEST)} is not valid JSON`, { cause });
  }
  if (m.magic !== 'holdfast-seed' || m.version !== 1 || !Array.isArray(m.files)) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION', `${path.join(dir, SEED_MANIFEST)} is not a version 1 Holdfast seed manifest`);
  }
  return m.files.map((f: unknown) => {
    const e = f as Partial<SeedEntry>;
    if (typeof e.type !== 'string' || !(REPLICATED_TYPES as readonly string[]).includes(e.type) || typeof e.name !== 'string' ||
        !validName(e.type, e.name) || !Number.isSafeInteger(e.size) || typeof e.digest !== 'string' || !/^[0-9a-f]{64}$/.test(e.digest) ||
        (contentAddressed(e.type) && e.digest !== e.name)) {
      throw new HoldfastError('HF_REPO_CORRUPT', `${path.join(dir, SEED_MANIFEST)} lists a malformed entry ${JSON.stringify(f).slice(0, 200)}`);
    }
    return e as SeedEntry;
  });
}

/**
 * Installs a shipped-disk seed into a tenant: every file is copied through
 * the same upload path as a PUT (partial file, digest check, fsync, rename),
 * so a damaged disk cannot plant a wrong file. Files already present are
 * skipped; the import can be rerun after an interruption.
 */
export async function importSeed(backend: StoreBackend, tenant: string, dir: string,
  onFile?: (e: SeedEntry, state: 'imported' | 'present') => void): Promise<{ files: number; bytes: number; present: number }> {
  const entries = await readSeedManifest(dir);
  // Write order of a repository: config and keys, packs, then index files, then snapshots.
  const rank: Record<ReplicatedType, number> = { config: 0, key: 0, pack: 1, index: 2, snapshot: 3 };
  entries.sort((a, b) => rank[a.type] - rank[b.type]);
  let files = 0;
  let bytes = 0;
  let present = 0;
  const buf = Buffer.allocUnsafe(PIECE);
  for (const e of entries) {
    if ((await backend.stat(tenant, e.type, e.name)) !== null) {
      present++;
      onFile?.(e, 'present');
      continue;
    }
    const src = filePath(dir, e.type, e.name);
    const fh = await fsp.open(src, 'r').catch((err: unknown) => {
      throw ioError(`cannot open ${e.type} ${e.name} on the seed`, err);
    });
    const upload = await backend.openUpload(tenant, e.type, e.name, e.digest, e.size);
    try {
      for (let off = 0; off < e.size;) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(PIECE, e.size - off), off);
        if (bytesRead === 0) throw new HoldfastError('HF_REPO_CORRUPT', `${e.type} ${e.name} on the seed is shorter than its manifest says`);
        await upload.write([buf.subarray(0, bytesRead)], off);
        off += bytesRead;
      }
      await upload.commit(e.size);
    } finally {
      await upload.close();
      await fh.close();
    }
    files++;
    bytes += e.size;
    onFile?.(e, 'imported');
  }
  return { files, bytes, present };
}
