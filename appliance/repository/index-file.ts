import { HoldfastError } from '../errors/index.ts';
import { type PackId, blobIdOf, idBytes } from './ids.ts';
import { ENTRY_SIZE, type PackEntry, readEntries, writeEntry } from './pack-entry.ts';

/** One pack's part of an index file. */
export interface IndexedPack {
  pack: PackId;
  entries: PackEntry[];
}

/**
 * Index file plaintext (sealed with magic HFINDX\0\1):
 *   u32 pack count, then per pack a section: pack id(32), u32 entry count,
 *   entries (45 bytes each).
 */
export function encodePackSection(pack: IndexedPack): Buffer {
  const out = Buffer.alloc(36 + pack.entries.length * ENTRY_SIZE);
  idBytes(pack.pack).copy(out, 0);
  out.writeUInt32LE(pack.entries.length, 32);
  pack.entries.forEach((e, i) => writeEntry(out, 36 + i * ENTRY_SIZE, e));
  return out;
}

/** An index file's plaintext from encoded pack sections. */
export function joinPackSections(sections: readonly Buffer[]): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32LE(sections.length, 0);
  return Buffer.concat([count, ...sections]);
}

export function encodeIndex(packs: readonly IndexedPack[]): Buffer {
  return joinPackSections(packs.map(encodePackSection));
}

export function decodeIndex(buf: Buffer, what: string): IndexedPack[] {
  const bad = (why: string) => new HoldfastError('HF_REPO_CORRUPT', `${what}: ${why}; run \`holdfast check\``);
  if (buf.length < 4) throw bad('too short');
  const count = buf.readUInt32LE(0);
  const out: IndexedPack[] = [];
  let o = 4;
  for (let i = 0; i < count; i++) {
    if (o + 36 > buf.length) throw bad('truncated');
    const pack = blobIdOf(buf.subarray(o, o + 32)) as string as PackId;
    const n = buf.readUInt32LE(o + 32);
    o += 36;
    out.push({ pack, entries: readEntries(buf, o, n, what) });
    o += n * ENTRY_SIZE;
  }
  if (o !== buf.length) throw bad('trailing bytes');
  return out;
}
