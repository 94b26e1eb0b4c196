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

/**
 * A decoded frame. The payload arrives as the socket's own pieces (`parts`,
 * no copy); `payload` joins them on first use. DATA frames are written and
 * hashed from `parts`, so a 1 MiB frame is never copied on the way to disk.
 */
export class Frame {
  readonly type: number;
  readonly flags: number;
  readonly stream: number;
  readonly length: number;
  readonly parts: Buffer[];
  #joined: Buffer | null = null;

  constructor(type: number, flags: number, stream: number, parts: Buffer[], length: number) {
    this.type = type;
    this.flags = flags;
    this.stream = stream;
    this.parts = parts;
    this.length = length;
  }

  get payload(): Buffer {
    this.#joined ??= this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.length);
    return this.#joined;
  }
}

/** Reusable frame buffers (header space + payload), so a sender does not allocate one per frame. */
export class FramePool {
  readonly size: number;
  readonly #free: Buffer[] = [];
  readonly #max: number;
  #made = 0;
  readonly #waiters: ((b: Buffer) => void)[] = [];

  constructor(payloadSize: number, max: number) {
    this.size = HEADER_SIZE + payloadSize;
    this.#max = max;
  }

  acquire(): Promise<Buffer> {
    const b = this.#free.pop();
    if (b) return Promise.resolve(b);
    if (this.#made < this.#max) {
      this.#made++;
      return Promise.resolve(Buffer.allocUnsafeSlow(this.size));
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  release(b: Buffer): void {
    const w = this.#waiters.shift();
    if (w) w(b);
    else this.#free.push(b);
  }
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
  readonly #head = Buffer.alloc(HEADER_SIZE);

  constructor(maxPayload = MAX_PAYLOAD) {
    this.#max = maxPayload;
  }

  /** Bytes received but not yet part of a whole frame. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    const frames: Frame[] = [];
    while (this.#buffered >= HEADER_SIZE) {
      const head = this.#peekHeader();
      const length = head.readUInt32BE(0);
      if (length > this.#max) {
        throw new HoldfastError('HF_PROTO_FRAME_TOO_LARGE', `a frame of ${length} bytes exceeds the maximum of ${this.#max}`);
      }
      if (this.#buffered < HEADER_SIZE + length) break;
      const type = head[4]!;
      const flags = head[5]!;
      const stream = head.readUInt32BE(6);
      this.#take(HEADER_SIZE);
      frames.push(new Frame(type, flags, stream, this.#take(length), length));
    }
    return frames;
  }

  /** The next 10 bytes, copied out when they span pieces (never a join of whole pieces). */
  #peekHeader(): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= HEADER_SIZE) return first;
    let got = 0;
    for (const c of this.#chunks) {
      got += c.copy(this.#head, got, 0, Math.min(c.length, HEADER_SIZE - got));
      if (got === HEADER_SIZE) break;
    }
    return this.#head;
  }

  /** Removes n bytes from the front, as slices of the received pieces. */
  #take(n: number): Buffer[] {
    const parts: Buffer[] = [];
    this.#buffered -= n;
    while (n > 0) {
      const c = this.#chunks[0]!;
      if (c.length <= n) {
        parts.push(c);
        this.#chunks.shift();
        n -= c.length;
      } else {
        parts.push(c.subarray(0, n));
        this.#chunks[0] = c.subarray(n);
        n = 0;
      }
    }
    return parts;
  }
}
