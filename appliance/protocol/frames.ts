import { HoldfastError } from '../errors/index.ts';

/** Frame types of protocol version 1 (docs/PROTOCOL.md, "Frames"). */
export const FrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  REQUEST: 0x03,
  RESPONSE: 0x04,
  DATA: 0x05,
  WINDOW: 0x06,
  ERROR: 0x07,
  CANCEL: 0x08,
  PING: 0x09,
  PONG: 0x0a,
  GOAWAY: 0x0b,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const FLAG_END = 0x01;
export const HEADER_SIZE = 10;
/** The largest payload of any frame in version 1. */
export const MAX_PAYLOAD = 1 << 20;
export const ALPN = 'holdfast/1';
export const PROTOCOL_VERSION = 1;

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** The 10-byte header of a frame (the payload is written after it, unchanged). */
export function frameHeader(type: FrameType, flags: number, stream: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER_SIZE);
  h.writeUInt32BE(length, 0);
  h[4] = type;
  h[5] = flags;
  h.writeUInt32BE(stream, 6);
  return h;
}

export function encodeFrame(type: FrameType, flags: number, stream: number, payload: Uint8Array = Buffer.alloc(0)): Buffer[] {
  return [frameHeader(type, flags, stream, payload.length), Buffer.from(payload.buffer, payload.byteOffset, payload.length)];
}

export function encodeJson(type: FrameType, flags: number, stream: number, body: unknown): Buffer[] {
  return encodeFrame(type, flags, stream, Buffer.from(JSON.stringify(body)));
}

/**
 * Splits a byte stream into frames. push() takes what the socket gave and
 * returns the complete frames; a header announcing more than maxPayload
 * throws HF_PROTO_FRAME_TOO_LARGE before any of that payload is buffered, so
 * a peer cannot make the reader hold more than one frame.
 */
export class FrameDecoder {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #buffered = 0;

  constructor(maxPayload = MAX_PAYLOAD) {
    this.#max = maxPayload;
  }

  /** Bytes received but not yet part of a whole frame. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.#buffered < HEADER_SIZE) break;
      const head = this.#peek(HEADER_SIZE);
      const length = head.readUInt32BE(0);
      if (length > this.#max) {
        throw new HoldfastError('HF_PROTO_FRAME_TOO_LARGE', `a frame of ${length} bytes exceeds the maximum of ${this.#max}`);
      }
      if (this.#buffered < HEADER_SIZE + length) break;
      const all = this.#take(HEADER_SIZE + length);
      frames.push({ type: all[4]!, flags: all[5]!, stream: all.readUInt32BE(6), payload: all.subarray(HEADER_SIZE) });
    }
    return frames;
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first;
    const merged = Buffer.concat(this.#chunks);
    this.#chunks = [merged];
    return merged;
  }

  #take(n: number): Buffer {
    let first = this.#chunks[0]!;
    if (first.length < n) {
      first = Buffer.concat(this.#chunks);
      this.#chunks = [first];
    }
    this.#buffered -= n;
    if (first.length === n) {
      this.#chunks.shift();
      return first;
    }
    this.#chunks[0] = first.subarray(n);
    return first.subarray(0, n);
  }
}
