import { HoldfastError } from '../errors/index.ts';
import { type BlobId, BlobType, blobIdOf, idBytes } from './ids.ts';

/** Where a blob sits in its pack. */
export interface PackEntry {
  id: BlobId;
  type: BlobType;
  /** Byte offset of the sealed blob in the pack file. */
  offset: number;
  /** Sealed length. */
  length: number;
  /** Plaintext length. */
  rawLength: number;
}

/** id(32) type(1) offset(u32) length(u32) rawLength(u32), little endian. */
export const ENTRY_SIZE = 45;

export function writeEntry(out: Buffer, at: number, e: PackEntry): void {
  idBytes(e.id).copy(out, at);
  out[at + 32] = e.type;
  out.writeUInt32LE(e.offset, at + 33);
  out.writeUInt32LE(e.length, at + 37);
  out.writeUInt32LE(e.rawLength, at + 41);
}

/** u32 count, then the entries. */
export function encodeEntries(entries: readonly PackEntry[]): Buffer {
  const out = Buffer.alloc(4 + entries.length * ENTRY_SIZE);
  out.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => writeEntry(out, 4 + i * ENTRY_SIZE, e));
  return out;
}

/** Decodes `count` entries at `at`; throws HF_REPO_CORRUPT (naming `what`) on bad values. */
export function readEntries(buf: Buffer, at: number, count: number, what: string): PackEntry[] {
  if (at + count * ENTRY_SIZE > buf.length) {
    throw new HoldfastError('HF_REPO_CORRUPT', `${what}: ${count} entries do not fit in ${buf.length} bytes`);
  }
  const out: PackEntry[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const o = at + i * ENTRY_SIZE;
    const type = buf[o + 32]!;
    if (type !== BlobType.data && type !== BlobType.tree) {
      throw new HoldfastError('HF_REPO_CORRUPT', `${what}: entry ${i} has unknown blob type ${type}`);
    }
    out[i] = {
      id: blobIdOf(buf.subarray(o, o + 32)),
      type: type as BlobType,
      offset: buf.readUInt32LE(o + 33),
      length: buf.readUInt32LE(o + 37),
      rawLength: buf.readUInt32LE(o + 41),
    };
  }
  return out;
}

export function decodeEntries(buf: Buffer, what: string): PackEntry[] {
  if (buf.length < 4) throw new HoldfastError('HF_REPO_CORRUPT', `${what}: too short`);
  const count = buf.readUInt32LE(0);
  if (4 + count * ENTRY_SIZE !== buf.length) {
    throw new HoldfastError('HF_REPO_CORRUPT', `${what}: ${count} entries but ${buf.length} bytes`);
  }
  return readEntries(buf, 4, count, what);
}

export function blobAad(type: BlobType, id: BlobId): Buffer {
  const aad = Buffer.allocUnsafe(33);
  aad[0] = type;
  idBytes(id).copy(aad, 1);
  return aad;
}
