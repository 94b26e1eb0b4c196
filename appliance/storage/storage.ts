/**
 * The storage contract: named files of a few types, nothing more. A
 * repository is built on it; the offsite store will serve the same contract.
 */

export type FileType = 'config' | 'key' | 'pack' | 'index' | 'snapshot' | 'lock';

export const FILE_TYPES: readonly FileType[] = ['config', 'key', 'pack', 'index', 'snapshot', 'lock'];

export interface FileInfo {
  name: string;
  size: number;
}

export interface SaveOptions {
  /** Fail with HF_STORAGE_EXISTS when the name exists (locks). */
  exclusive?: boolean;
}

/**
 * A file being written in pieces (packs). Nothing is visible under any name
 * until commit() resolves; commit has save()'s guarantees.
 */
export interface FileWriter {
  /** Appends bytes; calls MUST NOT overlap (await each). */
  write(parts: readonly Uint8Array[]): Promise<void>;
  /** Makes the bytes durable and visible as `name`. */
  commit(name: string): Promise<void>;
  /** Discards what was written; idempotent. */
  abort(): Promise<void>;
}

/**
 * A place to keep a repository's files.
 *
 * - `save` MUST be atomic and durable: once it resolves the whole file
 *   survives a crash; before that, no partial file is visible under the name.
 *   Saving a name that exists replaces it atomically, unless `exclusive`.
 * - `load` MUST reject with HF_STORAGE_NOT_FOUND for a missing file, and return
 *   exactly the bytes asked for (a range past the end is HF_IO).
 *   The buffer it returns is the caller's alone: it MUST NOT share memory
 *   (an ArrayBuffer) with anything the storage or its transport keeps or
 *   reuses, because the caller may free it at once (`release()`).
 * - `list` returns every complete file of a type, in no particular order.
 * - `remove` is idempotent: removing a missing file resolves.
 * - Names are validated by the storage (see `validName`); types are fixed.
 * Full disks reject with HF_DISK_FULL; other failures with HF_IO.
 */
export interface Storage {
  readonly location: string;
  save(type: FileType, name: string, parts: readonly Uint8Array[], options?: SaveOptions): Promise<void>;
  /** Starts a file to be written in pieces and named at the end. */
  create(type: FileType): Promise<FileWriter>;
  /** With `into` (exactly `length` bytes), a range is read into the caller's buffer and that is returned. */
  load(type: FileType, name: string, offset?: number, length?: number, into?: Buffer): Promise<Buffer>;
  stat(type: FileType, name: string): Promise<FileInfo>;
  list(type: FileType): Promise<FileInfo[]>;
  remove(type: FileType, name: string): Promise<void>;
  /** Releases cached handles. */
  close(): Promise<void>;
}

const HEX64 = /^[0-9a-f]{64}$/;
const SIMPLE = /^[a-z0-9][a-z0-9-]{0,127}$/;

/** Content-addressed types use 64 hex digits; the others short simple names. */
export function validName(type: FileType, name: string): boolean {
  switch (type) {
    case 'config':
      return name === 'config';
    case 'pack':
    case 'index':
    case 'snapshot':
      return HEX64.test(name);
    case 'key':
    case 'lock':
      return SIMPLE.test(name);
  }
}
