import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { MetaFile, Metadata, type MetadataKind, type Root, type Snapshot, type Targets, type Timestamp } from '@tufjs/models';

import { HoldfastError, errorCode, ioError } from '../../appliance/errors/index.ts';
import { type TufKey, signerOf } from './tuf-keys.ts';
import { writeFileAtomic } from './write-file-atomic.ts';

/** The TUF specification version written into every metadata file. */
export const SPEC_VERSION = '1.0.31';

/** The signed part of each top-level role's metadata. */
export interface RoleMetadata {
  root: Root;
  targets: Targets;
  snapshot: Snapshot;
  timestamp: Timestamp;
}

/** A metadata file as read or written: the parsed metadata and its exact bytes (which snapshot and timestamp hash). */
export interface MetadataFile<T extends Root | Targets | Snapshot | Timestamp> {
  readonly file: string;
  readonly metadata: Metadata<T>;
  readonly bytes: Buffer;
}

type JsonObject = Parameters<typeof Metadata.fromJSON>[1];

/**
 * Reads and parses one metadata file; signatures are not checked here (see
 * loadRepositoryState). A missing file is HF_UPDATE_METADATA (the repository
 * is incomplete), and so is a file that does not parse as the role's metadata.
 */
export async function readMetadataFile<K extends keyof RoleMetadata>(file: string, kind: K): Promise<MetadataFile<RoleMetadata[K]>> {
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(file);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') {
      throw new HoldfastError('HF_UPDATE_METADATA', `${kind} metadata ${file} is missing: the repository is incomplete`, { cause: err });
    }
    throw ioError(`cannot read ${kind} metadata ${file}`, err);
  }
  try {
    const json = JSON.parse(bytes.toString('utf8')) as JsonObject;
    const metadata = Metadata.fromJSON(kind as unknown as MetadataKind.Root, json) as unknown as Metadata<RoleMetadata[K]>;
    return { file, metadata, bytes };
  } catch (err) {
    throw new HoldfastError('HF_UPDATE_METADATA', `${kind} metadata ${file} is malformed: ${(err as Error).message}`, { cause: err });
  }
}

/** The bytes a metadata file holds: indented JSON (signatures cover the canonical form of `signed`, not these bytes). */
export function metadataBytes(md: Metadata<Root | Targets | Snapshot | Timestamp>): Buffer {
  return Buffer.from(`${JSON.stringify(md.toJSON(), null, 2)}\n`);
}

/** `signed` wrapped in Metadata and signed with every key given. */
export function signMetadata<T extends Root | Targets | Snapshot | Timestamp>(signed: T, keys: readonly TufKey[]): Metadata<T> {
  const metadata = new Metadata<T>(signed);
  for (const key of keys) metadata.sign(signerOf(key));
  return metadata;
}

/**
 * Signs `signed` with every key given and writes it to `metadataDir/name`
 * atomically (exclusive: HF_REPO_EXISTS when the name exists).
 */
export async function writeMetadataFile<T extends Root | Targets | Snapshot | Timestamp>(
  metadataDir: string, name: string, signed: T, keys: readonly TufKey[], opts: { exclusive: boolean },
): Promise<MetadataFile<T>> {
  return writeSignedMetadata(metadataDir, name, signMetadata(signed, keys), opts);
}

/** Writes signed metadata to `metadataDir/name` atomically (exclusive: HF_REPO_EXISTS when the name exists). */
export async function writeSignedMetadata<T extends Root | Targets | Snapshot | Timestamp>(
  metadataDir: string, name: string, metadata: Metadata<T>, opts: { exclusive: boolean },
): Promise<MetadataFile<T>> {
  const bytes = metadataBytes(metadata);
  const file = path.join(metadataDir, name);
  await writeFileAtomic(file, bytes, { mode: 0o644, exclusive: opts.exclusive });
  return { file, metadata, bytes };
}

/** What snapshot says of a targets file, and timestamp of a snapshot file: version, length, sha256 (so a mixed-in file of another version fails). */
export function metaFileOf(version: number, bytes: Buffer): MetaFile {
  return new MetaFile({ version, length: bytes.length, hashes: { sha256: createHash('sha256').update(bytes).digest('hex') } });
}

/** `now + seconds` in TUF's format (`YYYY-MM-DDTHH:MM:SSZ`), rounded up to the second. */
export function expiresAt(now: Date, seconds: number): string {
  const ms = Math.ceil((now.getTime() + seconds * 1000) / 1000) * 1000;
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
