import { errorCode } from '../errors/index.ts';

/** A path or name for one line of human output: control characters escaped. */
export function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => (c === '\n' ? '\\n' : c === '\t' ? '\\t' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** 1536 -> "1.5 KiB" */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`;
}

export function duration(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m}m${Math.round(seconds % 60)}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

export function time(iso: string): string {
  const d = new Date(iso);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function modeString(type: string, mode: number): string {
  const t = { dir: 'd', symlink: 'l', fifo: 'p', chardev: 'c', blockdev: 'b', socket: 's' }[type] ?? '-';
  let s = t;
  for (const shift of [6, 3, 0]) {
    const bits = (mode >> shift) & 7;
    s += (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (bits & 1 ? 'x' : '-');
  }
  return s;
}

/**
 * Output of one command: results to stdout (with --json, the last line is
 * one JSON object), messages and warnings to stderr, and a progress line on
 * a terminal that is rewritten in place.
 */
export class Output {
  readonly json: boolean;
  readonly #quiet: boolean;
  readonly #tty: boolean;
  #timer: NodeJS.Timeout | null = null;
  #lastLen = 0;

  constructor(options: { json?: boolean; quiet?: boolean }) {
    this.json = options.json ?? false;
    this.#quiet = options.quiet ?? false;
    this.#tty = process.stderr.isTTY === true && !this.json && !this.#quiet;
  }

  /** A line of results (human mode). */
  line(s: string): void {
    if (!this.json) process.stdout.write(`${s}\n`);
  }

  /** The final JSON object (json mode). */
  result(value: unknown): void {
    if (this.json) process.stdout.write(`${JSON.stringify(value)}\n`);
  }

  /** A message for the admin (stderr), unless quiet. */
  note(s: string): void {
    this.#clearProgress();
    if (!this.#quiet) process.stderr.write(`${s}\n`);
  }

  warn(s: string): void {
    this.#clearProgress();
    process.stderr.write(`warning: ${s}\n`);
  }

  /** Redraws status() every 250 ms on a terminal. */
  startProgress(status: () => string): void {
    if (!this.#tty) return;
    this.#timer = setInterval(() => {
      const s = status().slice(0, (process.stderr.columns || 100) - 1);
      process.stderr.write(`\r${s}${' '.repeat(Math.max(0, this.#lastLen - s.length))}`);
      this.#lastLen = s.length;
    }, 250);
    this.#timer.unref();
  }

  stopProgress(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#clearProgress();
  }

  #clearProgress(): void {
    if (this.#lastLen > 0) {
      process.stderr.write(`\r${' '.repeat(this.#lastLen)}\r`);
      this.#lastLen = 0;
    }
  }

  /** Prints an error with its code; in json mode also as the last stdout line. */
  error(err: unknown): void {
    this.stopProgress();
    const code = errorCode(err) ?? 'HF_INTERNAL';
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`holdfast: error ${code}: ${message}\n`);
    if (code === 'HF_INTERNAL' && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    if (this.json) process.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
  }
}
