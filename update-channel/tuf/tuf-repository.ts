import fsp from 'node:fs/promises';
import path from 'node:path';

import { Root, Snapshot, TargetFile, Targets, Timestamp } from '@tufjs/models';

import { HoldfastError, errorCode, ioError } from '../../appliance/errors/index.ts';
import { SPEC_VERSION, expiresAt, metaFileOf, signMetadata, writeMetadataFile, writeSignedMetadata } from './metadata-file.ts';
import { withRepositoryLock } from './repository-lock.ts';
import {
  CONFIG_MAGIC, CONFIG_VERSION, type RepositoryConfig, type RepositoryState, loadRepositoryState, repositoryPaths, roleKeys,
} from './repository-state.ts';
import { TUF_ROLES, type TufKey, type TufRole, generateTufKey, readTufKeys, retireTufKey, writeTufKey } from './tuf-keys.ts';
import { copyFileAtomic, writeFileAtomic } from './write-file-atomic.ts';

/** The release channels a box can follow. */
export type Channel = 'stable' | 'beta';
export const CHANNELS: readonly Channel[] = ['stable', 'beta'];

/** A release version: `MAJOR.MINOR.PATCH` with an optional `-prerelease`. */
export const RELEASE_VERSION = /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/;

const DAY = 86_400;

/** How long each role's metadata is valid when signed (seconds); timestamp's default can be set per repository. */
export const EXPIRY_SECONDS: Readonly<Record<TufRole, number>> = { root: 365 * DAY, targets: 365 * DAY, snapshot: 7 * DAY, timestamp: DAY };

/** Root keys in a new repository and how many must sign a root. */
export const ROOT_KEYS = 3;
export const ROOT_THRESHOLD = 2;

/** A release as the signed targets metadata lists it. */
export interface Release {
  channel: Channel;
  version: string;
  /** TUF target path: `<channel>/holdfast-<version>.tar.gz`. */
  path: string;
  length: number;
  sha256: string;
}

/** The version of each role's current metadata. */
export interface MetadataVersions {
  root: number;
  targets: number;
  snapshot: number;
  timestamp: number;
}

/** A release's TUF target path. */
export function releasePath(channel: Channel, version: string): string {
  return `${channel}/holdfast-${version}.tar.gz`;
}

/** Where a target's bytes live under `targets/` (consistent snapshots): `<dir>/<sha256>.<basename>`. */
export function targetFileName(targetPath: string, sha256: string): string {
  const dir = path.posix.dirname(targetPath);
  const name = `${sha256}.${path.posix.basename(targetPath)}`;
  return dir === '.' ? name : `${dir}/${name}`;
}

export interface InitTufRepositoryOptions {
  /** The repository: `metadata/` and `targets/` are served to boxes, `keys/` holds the online keys. Must not exist or be empty. */
  repoDir: string;
  /** Root and targets keys. Kept offline; must not be inside repoDir. */
  offlineKeysDir: string;
  now?: Date;
  /** Validity of every timestamp signed later unless told otherwise (default one day). */
  timestampExpiresInSeconds?: number;
}

export interface InitTufRepositoryResult {
  /** `1.root.json`'s bytes: what provisioning ships to boxes as their first trusted root. */
  root: Buffer;
  rootFile: string;
  keyIds: Record<TufRole, string[]>;
}

/**
 * Creates a repository: 3 root keys (threshold 2) and a targets key in
 * offlineKeysDir, snapshot and timestamp keys in `repoDir/keys/`, then
 * `1.root.json` (and `root.json`), `1.targets.json` (no targets),
 * `1.snapshot.json`, `timestamp.json`, and last `holdfast-tuf.json`.
 * A repoDir that is not empty, or an offlineKeysDir that holds keys, is
 * HF_REPO_EXISTS: nothing is overwritten.
 */
export async function initTufRepository(opts: InitTufRepositoryOptions): Promise<InitTufRepositoryResult> {
  checkDirs(opts.repoDir, opts.offlineKeysDir);
  const now = checkNow(opts.now);
  const timestampExpiresInSeconds = checkSeconds(opts.timestampExpiresInSeconds ?? EXPIRY_SECONDS.timestamp, 'timestampExpiresInSeconds');
  const paths = repositoryPaths(opts.repoDir);

  const present = await listDir(opts.repoDir);
  if (present.length > 0) {
    throw new HoldfastError('HF_REPO_EXISTS', `${opts.repoDir} is not empty (${present.slice(0, 3).join(', ')}): a TUF repository is only created in a new or empty directory`);
  }
  if ((await readTufKeys(opts.offlineKeysDir)).size > 0) {
    throw new HoldfastError('HF_REPO_EXISTS', `${opts.offlineKeysDir} already holds TUF keys: give each repository its own offline key directory`);
  }
  try {
    for (const dir of [opts.repoDir, paths.metadata, paths.targets]) await fsp.mkdir(dir, { recursive: true });
    for (const dir of [paths.keys, opts.offlineKeysDir]) await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw ioError(`cannot create the TUF repository ${opts.repoDir}`, err);
  }

  const keys: Record<TufRole, TufKey[]> = {
    root: Array.from({ length: ROOT_KEYS }, () => generateTufKey('root')),
    targets: [generateTufKey('targets')],
    snapshot: [generateTufKey('snapshot')],
    timestamp: [generateTufKey('timestamp')],
  };
  for (const key of [...keys.root, ...keys.targets]) await writeTufKey(opts.offlineKeysDir, key);
  for (const key of [...keys.snapshot, ...keys.timestamp]) await writeTufKey(paths.keys, key);

  const ids = (role: TufRole) => keys[role].map((k) => k.keyId);
  const root = buildRoot(1, expiresAt(now, EXPIRY_SECONDS.root), [...keys.root, ...keys.targets, ...keys.snapshot, ...keys.timestamp],
    { root: ids('root'), targets: ids('targets'), snapshot: ids('snapshot'), timestamp: ids('timestamp') });
  const rootFile = await writeMetadataFile(paths.metadata, '1.root.json', root, keys.root, { exclusive: true });
  await writeFileAtomic(path.join(paths.metadata, 'root.json'), rootFile.bytes, { mode: 0o644, exclusive: false });

  const targets = await writeMetadataFile(paths.metadata, '1.targets.json',
    new Targets({ version: 1, specVersion: SPEC_VERSION, expires: expiresAt(now, EXPIRY_SECONDS.targets), targets: {} }),
    keys.targets, { exclusive: false });
  const snapshot = await writeSnapshot(paths.metadata, 1, targets.metadata.signed.version, targets.bytes, now, keys.snapshot);
  await writeTimestamp(paths.metadata, 1, 1, snapshot, now, timestampExpiresInSeconds, keys.timestamp);

  const config: RepositoryConfig = { magic: CONFIG_MAGIC, version: CONFIG_VERSION, timestampExpiresInSeconds, created: now.toISOString() };
  await writeFileAtomic(paths.config, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o644, exclusive: true });
  return { root: rootFile.bytes, rootFile: rootFile.file, keyIds: Object.fromEntries(TUF_ROLES.map((r) => [r, ids(r)])) as Record<TufRole, string[]> };
}

export interface PublishReleaseOptions {
  repoDir: string;
  offlineKeysDir: string;
  /** The release bundle (tar.gz). */
  bundleFile: string;
  channel: Channel;
  version: string;
  now?: Date;
  /** Validity of the new timestamp (default: the repository's setting). */
  timestampExpiresInSeconds?: number;
}

export interface PublishResult {
  release: Release;
  /** True when the same bytes were already published under that version: no metadata was written. */
  unchanged: boolean;
  versions: MetadataVersions;
}

/**
 * Publishes a bundle as `<channel>/holdfast-<version>.tar.gz` with custom
 * metadata `{ channel, version }`. Order (each step atomic, so a crash
 * leaves the repository as it was or with unreferenced files only): the
 * bundle into `targets/<channel>/<sha256>.holdfast-<version>.tar.gz`, then
 * `N+1.targets.json` signed by the offline targets key, then
 * `M+1.snapshot.json` and last `timestamp.json`, signed by the online keys.
 *
 * Publishing a version again with the same bytes changes nothing
 * (`unchanged`); with other bytes it is HF_CONFLICT. A bad channel or
 * version is HF_INVALID_ARGUMENT; missing keys HF_PKI_NOT_FOUND.
 */
export async function publishRelease(opts: PublishReleaseOptions): Promise<PublishResult> {
  checkDirs(opts.repoDir, opts.offlineKeysDir);
  checkRelease(opts.channel, opts.version);
  const now = checkNow(opts.now);
  await checkFile(opts.bundleFile);
  const targetPath = releasePath(opts.channel, opts.version);
  return withRepositoryLock(opts.repoDir, `publishRelease ${targetPath}`, async () => {
    const state = await loadRepositoryState(opts.repoDir);
    const root = state.root.metadata.signed;
    const paths = repositoryPaths(opts.repoDir);
    // Keys first: a missing key fails before anything is written.
    const targetsKeys = roleKeys(root, 'targets', await readTufKeys(opts.offlineKeysDir), opts.offlineKeysDir);
    const online = await readTufKeys(paths.keys);
    const snapshotKeys = roleKeys(root, 'snapshot', online, paths.keys);
    const timestampKeys = roleKeys(root, 'timestamp', online, paths.keys);

    const dir = path.join(paths.targets, opts.channel);
    const base = path.posix.basename(targetPath);
    const copied = await copyFileAtomic(opts.bundleFile, dir, ({ sha256 }) => `${sha256}.${base}`);
    const release: Release = { channel: opts.channel, version: opts.version, path: targetPath, length: copied.length, sha256: copied.sha256 };

    const existing = state.targets.metadata.signed.targets[targetPath];
    if (existing) {
      if (existing.hashes.sha256 === copied.sha256 && existing.length === copied.length) {
        return { release, unchanged: true, versions: versionsOf(state) };
      }
      // The copy is named by a hash no targets metadata lists: nothing refers to it.
      await fsp.unlink(copied.file).catch(() => undefined);
      throw new HoldfastError('HF_CONFLICT',
        `${targetPath} is already published with other bytes (sha256 ${existing.hashes.sha256 ?? '?'}, ${existing.length} bytes; ` +
        `this bundle: ${copied.sha256}, ${copied.length} bytes): a published version never changes, publish a new version`);
    }

    const target = new TargetFile({
      path: targetPath,
      length: copied.length,
      hashes: { sha256: copied.sha256, sha512: copied.sha512 },
      unrecognizedFields: { custom: { channel: opts.channel, version: opts.version } },
    });
    const targetsVersion = state.targets.metadata.signed.version + 1;
    // A numbered file that exists but is not referenced by timestamp.json is
    // the remains of a crashed publish, never seen by a box: it is replaced.
    const targets = await writeMetadataFile(paths.metadata, `${targetsVersion}.targets.json`, new Targets({
      version: targetsVersion,
      specVersion: SPEC_VERSION,
      expires: expiresAt(now, EXPIRY_SECONDS.targets),
      targets: { ...state.targets.metadata.signed.targets, [targetPath]: target },
    }), targetsKeys, { exclusive: false });
    const snapshotVersion = state.snapshot.metadata.signed.version + 1;
    const snapshot = await writeSnapshot(paths.metadata, snapshotVersion, targetsVersion, targets.bytes, now, snapshotKeys);
    const timestampVersion = state.timestamp.metadata.signed.version + 1;
    const seconds = checkSeconds(opts.timestampExpiresInSeconds ?? state.config.timestampExpiresInSeconds, 'timestampExpiresInSeconds');
    await writeTimestamp(paths.metadata, timestampVersion, snapshotVersion, snapshot, now, seconds, timestampKeys);
    return {
      release,
      unchanged: false,
      versions: { root: root.version, targets: targetsVersion, snapshot: snapshotVersion, timestamp: timestampVersion },
    };
  });
}

export interface RefreshTimestampOptions {
  repoDir: string;
  now?: Date;
  /** Validity of the new timestamp (default: the repository's setting, one day unless set at init). */
  expiresInSeconds?: number;
}

export interface RefreshTimestampResult {
  /** The new timestamp's version and expiry. */
  version: number;
  expires: string;
  /**
   * When each role's current metadata expires: the server renews the
   * snapshot (refreshSnapshot) well before its date and warns the vendor
   * about targets and root, which need the offline keys.
   */
  expiries: Record<TufRole, string>;
}

/**
 * Signs a new `timestamp.json` (next version, same snapshot) with the online
 * timestamp key only. The fleet server calls it on a timer well inside the
 * timestamp's validity, so boxes never see an expired one; a box that does
 * is being frozen (or the server stopped). HF_REPO_LOCKED while a publish
 * runs in another process: try again at the next tick.
 */
export async function refreshTimestamp(opts: RefreshTimestampOptions): Promise<RefreshTimestampResult> {
  checkRepoDir(opts.repoDir);
  const now = checkNow(opts.now);
  return withRepositoryLock(opts.repoDir, 'refreshTimestamp', async () => {
    const state = await loadRepositoryState(opts.repoDir);
    const paths = repositoryPaths(opts.repoDir);
    const keys = roleKeys(state.root.metadata.signed, 'timestamp', await readTufKeys(paths.keys), paths.keys);
    const seconds = checkSeconds(opts.expiresInSeconds ?? state.config.timestampExpiresInSeconds, 'expiresInSeconds');
    const version = state.timestamp.metadata.signed.version + 1;
    const written = await writeTimestamp(paths.metadata, version, state.snapshot.metadata.signed.version, state.snapshot, now, seconds, keys);
    return {
      version,
      expires: written.metadata.signed.expires,
      expiries: {
        root: state.root.metadata.signed.expires,
        targets: state.targets.metadata.signed.expires,
        snapshot: state.snapshot.metadata.signed.expires,
        timestamp: written.metadata.signed.expires,
      },
    };
  });
}

export interface RefreshSnapshotOptions {
  repoDir: string;
  now?: Date;
  timestampExpiresInSeconds?: number;
}

/**
 * Signs a new snapshot (same targets) and timestamp with the online keys.
 * A snapshot is valid for 7 days: the server calls this daily, beside
 * refreshTimestamp's shorter timer. Targets (365 days) and root (365 days)
 * are renewed offline, by a publish and by rotateRootKeys (replace: 0).
 */
export async function refreshSnapshot(opts: RefreshSnapshotOptions): Promise<MetadataVersions> {
  checkRepoDir(opts.repoDir);
  const now = checkNow(opts.now);
  return withRepositoryLock(opts.repoDir, 'refreshSnapshot', async () => {
    const state = await loadRepositoryState(opts.repoDir);
    const paths = repositoryPaths(opts.repoDir);
    const root = state.root.metadata.signed;
    const online = await readTufKeys(paths.keys);
    const snapshotKeys = roleKeys(root, 'snapshot', online, paths.keys);
    const timestampKeys = roleKeys(root, 'timestamp', online, paths.keys);
    const snapshotVersion = state.snapshot.metadata.signed.version + 1;
    const snapshot = await writeSnapshot(paths.metadata, snapshotVersion, state.targets.metadata.signed.version, state.targets.bytes, now, snapshotKeys);
    const timestampVersion = state.timestamp.metadata.signed.version + 1;
    const seconds = checkSeconds(opts.timestampExpiresInSeconds ?? state.config.timestampExpiresInSeconds, 'timestampExpiresInSeconds');
    await writeTimestamp(paths.metadata, timestampVersion, snapshotVersion, snapshot, now, seconds, timestampKeys);
    return { root: root.version, targets: state.targets.metadata.signed.version, snapshot: snapshotVersion, timestamp: timestampVersion };
  });
}

export interface RotateRootKeysOptions {
  repoDir: string;
  offlineKeysDir: string;
  /** How many root keys to replace (0 renews the root's expiry with the same keys). Keys whose files are missing go first. */
  replace: number;
  /** Also replace the online timestamp key. */
  rotateTimestampKey?: boolean;
  now?: Date;
}

export interface RotateRootKeysResult {
  /** The new root's version (`<version>.root.json`). */
  version: number;
  rootKeyIds: string[];
  /** Root keyids no longer trusted. */
  replaced: string[];
  /** Key files moved to a `retired/` directory. */
  retired: string[];
  timestampKeyIds: string[];
}

/**
 * Writes `N+1.root.json` (and `root.json`) with `replace` root keys
 * replaced by new ones, signed by a threshold of the old root keys and a
 * threshold of the new (TUF 5.3.4: boxes check both). With
 * rotateTimestampKey the timestamp key is replaced too: a new timestamp
 * signed by the old and the new key is written before the root, so a box
 * verifies it under either. New keys are written before the root that
 * lists them; the replaced keys' files are moved to `retired/` after it.
 */
export async function rotateRootKeys(opts: RotateRootKeysOptions): Promise<RotateRootKeysResult> {
  checkDirs(opts.repoDir, opts.offlineKeysDir);
  const now = checkNow(opts.now);
  return withRepositoryLock(opts.repoDir, 'rotateRootKeys', async () => {
    const state = await loadRepositoryState(opts.repoDir);
    const paths = repositoryPaths(opts.repoDir);
    const oldRoot = state.root.metadata.signed;
    const rootRole = oldRoot.roles.root;
    if (!rootRole) throw new HoldfastError('HF_UPDATE_METADATA', `${state.root.file} has no root role`);
    if (!Number.isInteger(opts.replace) || opts.replace < 0 || opts.replace > rootRole.keyIDs.length) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `replace must be a whole number from 0 to ${rootRole.keyIDs.length}, not ${String(opts.replace)}`);
    }
    const offline = await readTufKeys(opts.offlineKeysDir);
    const oldSigners = roleKeys(oldRoot, 'root', offline, opts.offlineKeysDir);
    const online = await readTufKeys(paths.keys);
    const oldTimestampKeys = opts.rotateTimestampKey ? roleKeys(oldRoot, 'timestamp', online, paths.keys) : [];

    const order = [...rootRole.keyIDs.filter((id) => !offline.has(id)), ...rootRole.keyIDs.filter((id) => offline.has(id))];
    const replaced = order.slice(0, opts.replace);
    const newRootKeys = Array.from({ length: opts.replace }, () => generateTufKey('root'));
    for (const key of newRootKeys) await writeTufKey(opts.offlineKeysDir, key);
    const newTimestampKeys = opts.rotateTimestampKey ? [generateTufKey('timestamp')] : [];
    for (const key of newTimestampKeys) await writeTufKey(paths.keys, key);

    const ids = (role: TufRole): string[] => oldRoot.roles[role]?.keyIDs ?? [];
    const roles: Record<TufRole, string[]> = {
      root: [...rootRole.keyIDs.filter((id) => !replaced.includes(id)), ...newRootKeys.map((k) => k.keyId)],
      targets: ids('targets'),
      snapshot: ids('snapshot'),
      timestamp: opts.rotateTimestampKey ? newTimestampKeys.map((k) => k.keyId) : ids('timestamp'),
    };
    const publicKeys = [
      ...Object.values(roles).flat().flatMap((id) => {
        const key = oldRoot.keys[id];
        return key ? [{ keyId: id, publicKey: key }] : [];
      }),
      ...newRootKeys,
      ...newTimestampKeys,
    ];
    const version = oldRoot.version + 1;
    const root = buildRoot(version, expiresAt(now, EXPIRY_SECONDS.root), publicKeys, roles, {
      targets: oldRoot.roles.targets?.threshold, snapshot: oldRoot.roles.snapshot?.threshold,
    });
    // Every old root key at hand and every new one: a threshold of each set.
    const signers = [...oldSigners, ...newRootKeys];
    const signed = signMetadata(root, signers);
    try {
      state.root.metadata.verifyDelegate('root', signed);
      signed.verifyDelegate('root', signed);
    } catch (err) {
      throw new HoldfastError('HF_UPDATE_METADATA', `root version ${version} would not verify: ${(err as Error).message}`, { cause: err });
    }

    if (opts.rotateTimestampKey) {
      await writeTimestamp(paths.metadata, state.timestamp.metadata.signed.version + 1, state.snapshot.metadata.signed.version, state.snapshot,
        now, state.config.timestampExpiresInSeconds, [...oldTimestampKeys, ...newTimestampKeys]);
    }
    const rootFile = await writeSignedMetadata(paths.metadata, `${version}.root.json`, signed, { exclusive: true });
    await writeFileAtomic(path.join(paths.metadata, 'root.json'), rootFile.bytes, { mode: 0o644, exclusive: false });

    const retired: string[] = [];
    for (const id of replaced) {
      const key = offline.get(id);
      if (key) retired.push(await retireTufKey(opts.offlineKeysDir, key));
    }
    for (const key of oldTimestampKeys) retired.push(await retireTufKey(paths.keys, key));
    return { version, rootKeyIds: roles.root, replaced, retired, timestampKeyIds: roles.timestamp };
  });
}

/** Every release in the current signed targets metadata, by channel and then version. */
export async function listReleases(repoDir: string): Promise<Release[]> {
  checkRepoDir(repoDir);
  const state = await loadRepositoryState(repoDir);
  const releases: Release[] = [];
  for (const [targetPath, target] of Object.entries(state.targets.metadata.signed.targets)) {
    const { channel, version } = target.custom;
    const sha256 = target.hashes.sha256;
    if (!CHANNELS.includes(channel as Channel) || typeof version !== 'string' || !sha256) {
      throw new HoldfastError('HF_UPDATE_METADATA', `${state.targets.file}: target ${targetPath} lacks a channel, version or sha256`);
    }
    releases.push({ channel: channel as Channel, version, path: targetPath, length: target.length, sha256 });
  }
  return releases.sort((a, b) => a.channel.localeCompare(b.channel) || compareVersions(a.version, b.version));
}

/** Orders release versions: numerically by MAJOR.MINOR.PATCH, a prerelease before its release. */
export function compareVersions(a: string, b: string): number {
  const split = (v: string) => {
    const dash = v.indexOf('-');
    const core = (dash < 0 ? v : v.slice(0, dash)).split('.').map(Number);
    return { core, pre: dash < 0 ? null : v.slice(dash + 1) };
  };
  const x = split(a);
  const y = split(b);
  for (let i = 0; i < 3; i++) {
    const d = (x.core[i] ?? 0) - (y.core[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  if (x.pre === y.pre) return 0;
  if (x.pre === null) return 1;
  if (y.pre === null) return -1;
  return x.pre < y.pre ? -1 : 1;
}

function buildRoot(version: number, expires: string, keys: readonly { keyId: string; publicKey: { toJSON(): unknown } }[],
  roles: Record<TufRole, string[]>, thresholds: Partial<Record<TufRole, number | undefined>> = {}): Root {
  const role = (name: TufRole, threshold: number) => ({ keyids: roles[name], threshold: thresholds[name] ?? threshold });
  return Root.fromJSON({
    spec_version: SPEC_VERSION,
    version,
    expires,
    consistent_snapshot: true,
    keys: Object.fromEntries(keys.map((k) => [k.keyId, k.publicKey.toJSON()])),
    roles: { root: role('root', ROOT_THRESHOLD), targets: role('targets', 1), snapshot: role('snapshot', 1), timestamp: role('timestamp', 1) },
  } as Parameters<typeof Root.fromJSON>[0]);
}

async function writeSnapshot(metadataDir: string, version: number, targetsVersion: number, targetsBytes: Buffer, now: Date, keys: readonly TufKey[]) {
  return writeMetadataFile(metadataDir, `${version}.snapshot.json`, new Snapshot({
    version,
    specVersion: SPEC_VERSION,
    expires: expiresAt(now, EXPIRY_SECONDS.snapshot),
    meta: { 'targets.json': metaFileOf(targetsVersion, targetsBytes) },
  }), keys, { exclusive: false });
}

async function writeTimestamp(metadataDir: string, version: number, snapshotVersion: number, snapshot: { bytes: Buffer },
  now: Date, seconds: number, keys: readonly TufKey[]) {
  return writeMetadataFile(metadataDir, 'timestamp.json', new Timestamp({
    version,
    specVersion: SPEC_VERSION,
    expires: expiresAt(now, seconds),
    snapshotMeta: metaFileOf(snapshotVersion, snapshot.bytes),
  }), keys, { exclusive: false });
}

function versionsOf(state: RepositoryState): MetadataVersions {
  return {
    root: state.root.metadata.signed.version,
    targets: state.targets.metadata.signed.version,
    snapshot: state.snapshot.metadata.signed.version,
    timestamp: state.timestamp.metadata.signed.version,
  };
}

function checkRelease(channel: unknown, version: unknown): void {
  if (!CHANNELS.includes(channel as Channel)) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `channel ${JSON.stringify(channel)} is not one of ${CHANNELS.join(', ')}`);
  }
  if (typeof version !== 'string' || !RELEASE_VERSION.test(version)) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `release version ${JSON.stringify(version)} is not MAJOR.MINOR.PATCH[-prerelease]`);
  }
}

function checkRepoDir(repoDir: unknown): void {
  if (typeof repoDir !== 'string' || repoDir === '') throw new HoldfastError('HF_INVALID_ARGUMENT', 'repoDir is not given');
}

/** Offline keys inside the served repository would not be offline. */
function checkDirs(repoDir: string, offlineKeysDir: unknown): void {
  checkRepoDir(repoDir);
  if (typeof offlineKeysDir !== 'string' || offlineKeysDir === '') throw new HoldfastError('HF_INVALID_ARGUMENT', 'offlineKeysDir is not given');
  const rel = path.relative(path.resolve(repoDir), path.resolve(offlineKeysDir));
  if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `offlineKeysDir ${offlineKeysDir} is inside repoDir ${repoDir}: root and targets keys must be kept away from the served repository`);
  }
}

function checkNow(now: Date | undefined): Date {
  const value = now ?? new Date();
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) throw new HoldfastError('HF_INVALID_ARGUMENT', 'now is not a valid Date');
  return value;
}

function checkSeconds(seconds: number, what: string): number {
  if (!Number.isInteger(seconds) || seconds <= 0) throw new HoldfastError('HF_INVALID_ARGUMENT', `${what} must be a positive whole number of seconds, not ${String(seconds)}`);
  return seconds;
}

async function checkFile(file: unknown): Promise<void> {
  if (typeof file !== 'string' || file === '') throw new HoldfastError('HF_INVALID_ARGUMENT', 'bundleFile is not given');
  try {
    const st = await fsp.stat(file);
    if (!st.isFile()) throw new HoldfastError('HF_INVALID_ARGUMENT', `bundle ${file} is not a regular file`);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') throw new HoldfastError('HF_INVALID_ARGUMENT', `bundle ${file} does not exist`, { cause: err });
    throw ioError(`cannot read bundle ${file}`, err);
  }
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return [];
    throw ioError(`cannot list ${dir}`, err);
  }
}
