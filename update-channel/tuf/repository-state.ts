import fsp from 'node:fs/promises';
import path from 'node:path';

import type { Metadata, Root, Snapshot, Targets, Timestamp } from '@tufjs/models';

import { HoldfastError, errorCode, ioError } from '../../appliance/errors/index.ts';
import { type MetadataFile, type RoleMetadata, readMetadataFile } from './metadata-file.ts';
import type { TufKey, TufRole } from './tuf-keys.ts';

/** `repoDir/holdfast-tuf.json`: marks a Holdfast TUF repository and holds its settings. */
export const CONFIG_FILE = 'holdfast-tuf.json';
export const CONFIG_MAGIC = 'holdfast-tuf-repository';
export const CONFIG_VERSION = 1;

export interface RepositoryConfig {
  magic: typeof CONFIG_MAGIC;
  version: typeof CONFIG_VERSION;
  /** How long a timestamp signed by publishRelease or refreshTimestamp is valid unless told otherwise. */
  timestampExpiresInSeconds: number;
  created: string;
}

/** The repository's directories: `metadata/` and `targets/` are served to boxes; `keys/` never is. */
export function repositoryPaths(repoDir: string): { metadata: string; targets: string; keys: string; config: string } {
  return {
    metadata: path.join(repoDir, 'metadata'),
    targets: path.join(repoDir, 'targets'),
    keys: path.join(repoDir, 'keys'),
    config: path.join(repoDir, CONFIG_FILE),
  };
}

/** The repository as boxes see it now: the newest root and the chain timestamp → snapshot → targets. */
export interface RepositoryState {
  readonly repoDir: string;
  readonly config: RepositoryConfig;
  readonly root: MetadataFile<Root>;
  readonly timestamp: MetadataFile<Timestamp>;
  readonly snapshot: MetadataFile<Snapshot>;
  readonly targets: MetadataFile<Targets>;
}

export async function readRepositoryConfig(repoDir: string): Promise<RepositoryConfig> {
  const file = repositoryPaths(repoDir).config;
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT' || errorCode(err) === 'ENOTDIR') {
      throw new HoldfastError('HF_REPO_NOT_FOUND', `there is no TUF repository at ${repoDir} (no ${CONFIG_FILE}): run initTufRepository first`, { cause: err });
    }
    throw ioError(`cannot read ${file}`, err);
  }
  let config: Partial<RepositoryConfig>;
  try {
    config = JSON.parse(text) as Partial<RepositoryConfig>;
  } catch (err) {
    throw new HoldfastError('HF_REPO_CORRUPT', `${file} is not JSON`, { cause: err });
  }
  if (config.magic !== CONFIG_MAGIC) throw new HoldfastError('HF_REPO_CORRUPT', `${file} is not a Holdfast TUF repository's configuration`);
  if (config.version !== CONFIG_VERSION) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION', `${file} has format version ${String(config.version)}; this program reads version ${CONFIG_VERSION}`);
  }
  if (!Number.isInteger(config.timestampExpiresInSeconds) || (config.timestampExpiresInSeconds ?? 0) <= 0) {
    throw new HoldfastError('HF_REPO_CORRUPT', `${file}: timestampExpiresInSeconds is not a positive integer`);
  }
  return config as RepositoryConfig;
}

/**
 * Loads the repository and checks it the way a box will, except for expiry
 * (an expired timestamp is what refreshTimestamp is there to replace): every
 * root from 1.root.json up is signed by a threshold of its predecessor's root
 * keys and of its own, timestamp by the timestamp role, the snapshot and
 * targets files it names have the recorded version, length and hash and are
 * signed by their roles. Any failure is HF_UPDATE_METADATA naming the file.
 *
 * The current root is the highest consecutive `N.root.json`, not
 * `root.json`: boxes probe `N+1.root.json`, so a numbered root is live as
 * soon as it exists.
 */
export async function loadRepositoryState(repoDir: string): Promise<RepositoryState> {
  const config = await readRepositoryConfig(repoDir);
  const dir = repositoryPaths(repoDir).metadata;

  let root = await readMetadataFile(path.join(dir, '1.root.json'), 'root');
  check(root, () => root.metadata.verifyDelegate('root', root.metadata));
  check(root, () => expectVersion(root.metadata, 1));
  for (let version = 2; ; version++) {
    const file = path.join(dir, `${version}.root.json`);
    if (!(await exists(file))) break;
    const next = await readMetadataFile(file, 'root');
    const trusted = root;
    check(next, () => trusted.metadata.verifyDelegate('root', next.metadata));
    check(next, () => next.metadata.verifyDelegate('root', next.metadata));
    check(next, () => expectVersion(next.metadata, version));
    root = next;
  }

  const timestamp = await readMetadataFile(path.join(dir, 'timestamp.json'), 'timestamp');
  check(timestamp, () => root.metadata.verifyDelegate('timestamp', timestamp.metadata));

  const snapshotMeta = timestamp.metadata.signed.snapshotMeta;
  const snapshot = await readMetadataFile(path.join(dir, `${snapshotMeta.version}.snapshot.json`), 'snapshot');
  check(snapshot, () => snapshotMeta.verify(snapshot.bytes));
  check(snapshot, () => root.metadata.verifyDelegate('snapshot', snapshot.metadata));
  check(snapshot, () => expectVersion(snapshot.metadata, snapshotMeta.version));

  const targetsMeta = snapshot.metadata.signed.meta['targets.json'];
  if (!targetsMeta) throw new HoldfastError('HF_UPDATE_METADATA', `${snapshot.file} lists no targets.json`);
  const targets = await readMetadataFile(path.join(dir, `${targetsMeta.version}.targets.json`), 'targets');
  check(targets, () => targetsMeta.verify(targets.bytes));
  check(targets, () => root.metadata.verifyDelegate('targets', targets.metadata));
  check(targets, () => expectVersion(targets.metadata, targetsMeta.version));

  return { repoDir, config, root, timestamp, snapshot, targets };
}

/**
 * The keys of `available` that the root lists for a role. Fewer than the
 * role's threshold is HF_PKI_NOT_FOUND naming the directory that should hold
 * them (`where`).
 */
export function roleKeys(root: Root, role: TufRole, available: ReadonlyMap<string, TufKey>, where: string): TufKey[] {
  const listed = root.roles[role];
  if (!listed) throw new HoldfastError('HF_UPDATE_METADATA', `root version ${root.version} has no ${role} role`);
  const keys = listed.keyIDs.flatMap((id) => {
    const key = available.get(id);
    return key ? [key] : [];
  });
  if (keys.length < listed.threshold) {
    throw new HoldfastError('HF_PKI_NOT_FOUND',
      `${where} holds ${keys.length} of the ${role} keys root version ${root.version} lists (${listed.threshold} needed to sign): ` +
      `bring the right key directory`);
  }
  return keys;
}

function expectVersion(md: Metadata<RoleMetadata[keyof RoleMetadata]>, version: number): void {
  if (md.signed.version !== version) throw new Error(`version ${md.signed.version} where ${version} was expected`);
}

function check(file: { file: string }, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    throw new HoldfastError('HF_UPDATE_METADATA', `${file.file} does not verify: ${(err as Error).message}`, { cause: err });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fsp.access(file);
    return true;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return false;
    throw ioError(`cannot read ${file}`, err);
  }
}
