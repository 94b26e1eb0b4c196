import { validateChunkerParams } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';

/** The repository config (sealed file `config`). */
export interface RepoConfig {
  version: 1;
  id: string;
  created: string;
  chunker: { minSize: number; avgSize: number; maxSize: number };
  /** zstd level for new blobs. */
  compression: number;
  /** A pack is finished once its blobs reach this many bytes. */
  packSize: number;
}

export const DEFAULT_CHUNKER = { minSize: 256 << 10, avgSize: 1 << 20, maxSize: 4 << 20 } as const;
export const DEFAULT_COMPRESSION = 3;
export const DEFAULT_PACK_SIZE = 16 << 20;

export function parseConfig(plain: Buffer): RepoConfig {
  let c: RepoConfig;
  try {
    c = JSON.parse(plain.toString('utf8')) as RepoConfig;
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT', 'the repository config is not valid JSON', { cause });
  }
  if (c?.version !== 1) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION',
      `repository config version ${String(c?.version)}; this Holdfast reads version 1: upgrade Holdfast`);
  }
  try {
    validateChunkerParams(c.chunker);
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT', `the repository config has invalid chunker sizes`, { cause });
  }
  if (!/^[0-9a-f]{64}$/.test(c.id) || !Number.isInteger(c.compression) || c.compression < 1 || c.compression > 19 ||
      !Number.isInteger(c.packSize) || c.packSize < 1 << 20 || c.packSize > 1 << 30) {
    throw new HoldfastError('HF_REPO_CORRUPT', 'the repository config has invalid fields');
  }
  return c;
}
