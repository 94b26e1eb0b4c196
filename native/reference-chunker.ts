/**
 * The TypeScript reference for native/src/fastcdc.c: same boundaries, same
 * ids, byte at a time and obviously so. It exists to pin the algorithm down
 * (docs/DESIGN.md, "Chunker") and to check the native code on test vectors;
 * it is far too slow for backups.
 *
 * The 64-bit gear hash is kept as two 32-bit halves.
 */
import { createHmac, type Hmac } from 'node:crypto';

import type { Chunk, ChunkerParams } from './index.ts';

function topBits(bits: number): { hi: number; lo: number } {
  const mask = ((1n << 64n) - 1n) ^ ((1n << BigInt(64 - bits)) - 1n);
  return { hi: Number(mask >> 32n) >>> 0, lo: Number(mask & 0xffffffffn) >>> 0 };
}

export class ReferenceChunker {
  readonly #gLo = new Uint32Array(256);
  readonly #gHi = new Uint32Array(256);
  readonly #small: { hi: number; lo: number };
  readonly #large: { hi: number; lo: number };
  readonly #p: ChunkerParams;
  readonly #idKey: Uint8Array | null;
  #hLo = 0;
  #hHi = 0;
  #len = 0;
  #mac: Hmac | null = null;

  constructor(gear: Uint8Array, params: ChunkerParams, idKey: Uint8Array | null) {
    const g = Buffer.from(gear.buffer, gear.byteOffset, gear.byteLength);
    for (let i = 0; i < 256; i++) {
      this.#gLo[i] = g.readUInt32LE(i * 8);
      this.#gHi[i] = g.readUInt32LE(i * 8 + 4);
    }
    const bits = Math.log2(params.avgSize);
    this.#small = topBits(bits + 2);
    this.#large = topBits(bits - 2);
    this.#p = params;
    this.#idKey = idKey;
  }

  update(data: Uint8Array, final: boolean): Chunk[] {
    const { minSize, avgSize, maxSize } = this.#p;
    const warmAt = minSize - 64;
    const out: Chunk[] = [];
    let pieceStart = 0;
    for (let i = 0; i < data.length; i++) {
      if (this.#len >= warmAt) {
        const b = data[i]!;
        const carryFromLo = this.#hLo >>> 31;
        let hi = ((this.#hHi << 1) | carryFromLo) >>> 0;
        const sum = ((this.#hLo << 1) >>> 0) + this.#gLo[b]!;
        this.#hLo = sum >>> 0;
        hi = (hi + this.#gHi[b]! + (sum > 0xffffffff ? 1 : 0)) >>> 0;
        this.#hHi = hi;
      }
      this.#len++;
      const L = this.#len;
      let cut = false;
      if (L >= maxSize) cut = true;
      else if (L >= minSize) {
        const m = L < avgSize ? this.#small : this.#large;
        cut = (this.#hHi & m.hi) === 0 && (this.#hLo & m.lo) === 0;
      }
      if (cut) {
        out.push(this.#finish(data.subarray(pieceStart, i + 1)));
        pieceStart = i + 1;
      }
    }
    this.#feed(data.subarray(pieceStart));
    if (final && this.#len > 0) out.push(this.#finish(new Uint8Array(0)));
    if (final) this.#reset();
    return out;
  }

  #feed(bytes: Uint8Array): void {
    if (!this.#idKey || bytes.length === 0) return;
    this.#mac ??= createHmac('sha256', this.#idKey);
    this.#mac.update(bytes);
  }

  #finish(lastPiece: Uint8Array): Chunk {
    const length = this.#len;
    let id = Buffer.alloc(32);
    if (this.#idKey) {
      this.#feed(lastPiece);
      id = (this.#mac ?? createHmac('sha256', this.#idKey)).digest();
    }
    this.#reset();
    return { length, id };
  }

  #reset(): void {
    this.#hLo = 0;
    this.#hHi = 0;
    this.#len = 0;
    this.#mac = null;
  }
}
