import type { Sealer } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';
import type { Storage } from '../storage/index.ts';
import { Magic } from './envelope.ts';
import { type PackId, shortId } from './ids.ts';
import { type PackEntry, decodeEntries } from './pack-entry.ts';
import { TRAILER_MAGIC, TRAILER_SIZE } from './pack-writer.ts';

const MIN_PACK = Magic.pack.length + 29 + TRAILER_SIZE;

/**
 * Reads and checks a pack's header from its tail (two small reads). Every
 * entry must lie between the magic and the header, without overlap.
 * HF_PACK_CORRUPT names the pack when anything is off.
 */
export async function readPackHeader(storage: Storage, sealer: Sealer, id: PackId, size: number): Promise<PackEntry[]> {
  const what = `pack ${shortId(id)} in ${storage.location}`;
  const corrupt = (why: string, cause?: unknown) =>
    new HoldfastError('HF_PACK_CORRUPT', `${what}: ${why}; run \`holdfast check --read-data\``, { cause });
  if (size < MIN_PACK) throw corrupt(`only ${size} bytes`);
  const trailer = await storage.load('pack', id, size - TRAILER_SIZE, TRAILER_SIZE);
  if (!trailer.subarray(4).equals(TRAILER_MAGIC)) throw corrupt('trailer magic missing');
  const headerLen = trailer.readUInt32LE(0);
  const headerAt = size - TRAILER_SIZE - headerLen;
  if (headerLen < 29 || headerAt < Magic.pack.length) throw corrupt(`header length ${headerLen} does not fit`);
  const header = await storage.load('pack', id, headerAt, headerLen);
  let plain: Buffer;
  try {
    ({ plain } = await sealer.open(Magic.packHeader, header, 1 << 30, null));
  } catch (cause) {
    throw corrupt('header cannot be opened', cause);
  }
  let entries: PackEntry[];
  try {
    entries = decodeEntries(plain, what);
  } catch (cause) {
    throw corrupt('header is malformed', cause);
  }
  let next = Magic.pack.length;
  for (const e of entries) {
    if (e.offset !== next || e.length < 29) throw corrupt(`blob ${shortId(e.id)} is not where the header says`);
    next = e.offset + e.length;
  }
  if (next !== headerAt) throw corrupt('blobs and header do not tile the file');
  return entries;
}
