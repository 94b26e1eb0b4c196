/**
 * Distinct id types per layer. All are 64 lowercase hex digits (32 bytes):
 * BlobId = HMAC-SHA-256(id key, plaintext); PackId, IndexId and SnapshotId =
 * SHA-256 of the stored file's bytes.
 */
declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

export type BlobId = Brand<string, 'BlobId'>;
export type PackId = Brand<string, 'PackId'>;
export type IndexId = Brand<string, 'IndexId'>;
export type SnapshotId = Brand<string, 'SnapshotId'>;

/** The kinds of blob; the value is the byte bound into each blob's AAD. */
export const BlobType = { data: 0, tree: 1 } as const;
export type BlobType = (typeof BlobType)[keyof typeof BlobType];

const HEX64 = /^[0-9a-f]{64}$/;

export function isId(s: string): boolean {
  return HEX64.test(s);
}

export function blobIdOf(b: Uint8Array): BlobId {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex') as BlobId;
}

export function idBytes(id: string): Buffer {
  return Buffer.from(id, 'hex');
}

/** The short form shown to people (like git and restic). */
export function shortId(id: string): string {
  return id.slice(0, 8);
}
