import type { SftpClient } from './sftp-client.ts';

export interface ReadPipelineOptions {
  /** File offset of the first byte wanted. */
  start: number;
  /** The size the file is expected to have (its listed size). */
  expected: number;
  /** Bytes per READ request (the server's maximum). */
  readLen: number;
  /** No new piece is started while the pieces not yet handed out hold this many bytes. */
  readAhead: number;
  /** A buffer (any length ≥ 1) for the piece that starts at file offset `offset`. */
  take(offset: number): Buffer;
  /** Takes back a piece buffer that was never handed out. */
  give(buf: Buffer): void;
  /** Read on past the expected size when the file grew (default true); false only notes it (`grew`). */
  followGrowth?: boolean;
}

interface Piece {
  buf: Buffer;
  /** File offset of buf[0]. */
  start: number;
  /** Bytes of buf asked for so far. */
  planned: number;
  /** READs into buf not yet answered. */
  outstanding: number;
}

/**
 * Reads one open file with many READs in flight, handing out pieces in file
 * order.
 *
 * - Pieces are filled by READs of `readLen` bytes; a new piece is started
 *   only while the pieces not yet handed out hold less than `readAhead`
 *   bytes, so a slow consumer stops the reading (backpressure).
 * - READs cover the expected size, plus one READ at the expected end that
 *   sees the end of file in the same round trip (or that the file grew; it
 *   is then read on until the end). A short READ is asked again for the
 *   rest; only an EOF status ends the file.
 * - A piece is handed out (next) once every READ into it is answered; the
 *   first error rejects next. stop() abandons what is in flight and gives
 *   back the buffers not handed out; after it no buffer is written to.
 */
export class ReadPipeline {
  readonly #client: SftpClient;
  readonly #handle: Buffer;
  readonly #o: ReadPipelineOptions;
  readonly #expected: number;
  readonly #pieces: Piece[] = [];
  readonly #inFlight = new Set<number>();
  /** File offset of the next byte to ask for. */
  #next: number;
  /** Bytes planned in pieces not handed out. */
  #queued = 0;
  #eof = Infinity;
  #grew = false;
  #issued = 0;
  #error: Error | null = null;
  #stopped = false;
  #wake: (() => void) | null = null;

  constructor(client: SftpClient, handle: Buffer, o: ReadPipelineOptions) {
    this.#client = client;
    this.#handle = handle;
    this.#o = o;
    this.#next = o.start;
    // a resumed read past the listed size reads on until the end
    this.#expected = Math.max(o.expected, o.start);
    this.#fill();
  }

  /** Whether bytes past the expected size were seen. */
  get grew(): boolean {
    return this.#grew;
  }

  /** READs sent so far (a request made after them is answered after them). */
  get issued(): number {
    return this.#issued;
  }

  /** Whether every READ up to the expected end (and the one past it) is sent. */
  get planned(): boolean {
    return !this.#grew && this.#next > this.#expected;
  }

  /** The next piece in file order, or null after the last; rejects with the first error. */
  async next(): Promise<Buffer | null> {
    for (;;) {
      if (this.#error) throw this.#error;
      if (this.#stopped) return null;
      this.#fill();
      const head = this.#pieces[0];
      if (!head) return null;
      if (head.outstanding > 0) {
        await new Promise<void>((resolve) => { this.#wake = resolve; });
        continue;
      }
      this.#pieces.shift();
      this.#queued -= head.planned;
      const end = Math.min(this.#eof, head.start + head.planned);
      if (end <= head.start) {
        this.#o.give(head.buf);
        continue;
      }
      if (end === this.#eof) this.stop(); // the rest lies past the end
      return head.buf.subarray(0, end - head.start);
    }
  }

  /** Abandons READs in flight and gives back every buffer not handed out. Idempotent. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const id of this.#inFlight) this.#client.abandon(id);
    this.#inFlight.clear();
    for (const p of this.#pieces) this.#o.give(p.buf);
    this.#pieces.length = 0;
    this.#queued = 0;
    this.#wakeUp();
  }

  /** Asks for more while there is something to ask for and room to put it. */
  #fill(): void {
    const { readLen, readAhead } = this.#o;
    while (!this.#stopped && !this.#error) {
      const limit = this.#grew && this.#o.followGrowth !== false ? this.#eof : Math.min(this.#eof, this.#expected + 1);
      if (this.#next >= limit) return;
      let piece = this.#pieces.at(-1);
      if (!piece || piece.planned === piece.buf.length || piece.start + piece.planned !== this.#next) {
        if (this.#queued >= readAhead) return;
        piece = { buf: this.#o.take(this.#next), start: this.#next, planned: 0, outstanding: 0 };
        this.#pieces.push(piece);
      }
      let len = Math.min(readLen, piece.buf.length - piece.planned);
      if (this.#next < this.#expected) len = Math.min(len, this.#expected - this.#next);
      this.#issue(piece, piece.planned, this.#next, len);
      piece.planned += len;
      this.#queued += len;
      this.#next += len;
    }
  }

  #issue(piece: Piece, at: number, offset: number, len: number): void {
    piece.outstanding++;
    this.#issued++;
    const id = this.#client.read(this.#handle, offset, len, piece.buf, at, (err, n) => {
      this.#inFlight.delete(id);
      piece.outstanding--;
      if (err) {
        this.#error ??= err;
      } else if (n <= 0) {
        // EOF (an empty DATA counts as one, so a confused server cannot loop us)
        this.#eof = Math.min(this.#eof, offset);
      } else {
        if (offset + n > this.#expected) this.#grew = true;
        if (n < len && offset + n < this.#eof) this.#issue(piece, at + n, offset + n, len - n);
      }
      this.#fill();
      if (err || piece === this.#pieces[0]) this.#wakeUp();
    });
    this.#inFlight.add(id);
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }
}
