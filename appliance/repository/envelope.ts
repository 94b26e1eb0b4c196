import type { Sealer } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';

/**
 * Sealed files: magic(8) || nonce(12) || AES-256-GCM(encoding || payload) || tag(16),
 * the magic being the AAD. A magic is six letters, a zero byte and a version
 * byte; it is never edited (docs/DESIGN.md, "Files").
 */
export const Magic = {
  config: Buffer.from('HFCONF\x00\x01', 'latin1'),
  index: Buffer.from('HFINDX\x00\x01', 'latin1'),
  snapshot: Buffer.from('HFSNAP\x00\x01', 'latin1'),
  pack: Buffer.from('HFPACK\x00\x01', 'latin1'),
  packHeader: Buffer.from('HFPKHD\x00\x01', 'latin1'),
} as const;

export type MagicName = keyof typeof Magic;

/** Upper bound on any sealed file's plaintext (decompression-bomb guard). */
export const MAX_FILE_PLAIN = 1 << 30;

export async function sealFile(sealer: Sealer, kind: MagicName, plain: Uint8Array): Promise<Buffer[]> {
  const magic = Magic[kind];
  return [magic, await sealer.sealData(magic, plain, true)];
}

/** Checks the magic, then opens; what names the file in errors. */
export async function openFile(sealer: Sealer, kind: MagicName, bytes: Buffer, what: string): Promise<Buffer> {
  checkMagic(kind, bytes, what);
  try {
    const { plain } = await sealer.open(Magic[kind], bytes.subarray(8), MAX_FILE_PLAIN, null);
    return plain;
  } catch (cause) {
    throw new HoldfastError('HF_REPO_CORRUPT',
      `${what} cannot be opened (${(cause as Error).message}); run \`holdfast check\``, { cause });
  }
}

export function checkMagic(kind: MagicName, bytes: Buffer, what: string, at = 0): void {
  const magic = Magic[kind];
  const got = bytes.subarray(at, at + 8);
  if (got.length === 8 && got.subarray(0, 7).equals(magic.subarray(0, 7)) && got[7] !== magic[7]) {
    throw new HoldfastError('HF_UNSUPPORTED_VERSION',
      `${what} has format version ${got[7]}; this Holdfast reads version ${magic[7]}: upgrade Holdfast`);
  }
  if (!got.equals(magic)) {
    throw new HoldfastError(kind === 'pack' ? 'HF_PACK_CORRUPT' : 'HF_REPO_CORRUPT',
      `${what} does not start with the ${magic.subarray(0, 6).toString('latin1')} magic; run \`holdfast check\``);
  }
}
