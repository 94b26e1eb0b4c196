/**
 * Bandwidth limits for replication: rate and schedule parsing (CLI boundary),
 * a FIFO token bucket, and a limiter that draws from several buckets at once
 * (per target and global).
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { HoldfastError } from '../errors/index.ts';

/** Time source of a bucket. Tests inject a fake one. */
export interface RateClock {
  /** Monotonic milliseconds. */
  now(): number;
  /** MUST resolve after ms, and MUST reject promptly when signal aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: RateClock = {
  now: () => performance.now(),
  sleep: (ms, signal) => sleep(ms, undefined, { signal }),
};

const UNITS = new Map(Object.entries({
  B: 1, kB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40,
}));
const RATE_HELP = "e.g. '20MiB/s', '500KiB/s', '10MB/s' (1000-based), '0' (paused) or 'unlimited'";

/**
 * Parses a rate into bytes per second: `<number><unit>/s` with unit B, kB, MB,
 * GB, TB (1000-based) or KiB, MiB, GiB, TiB (1024-based), rounded to whole
 * bytes; `0` means paused; `unlimited` or `off` is Infinity.
 * Throws HF_USAGE for anything else.
 */
export function parseRate(text: string): number {
  const s = text.trim();
  if (/^(unlimited|off)$/i.test(s)) return Infinity;
  if (s === '0') return 0;
  const m = /^(\d+(?:\.\d+)?)\s*([A-Za-z]+)\/s$/.exec(s);
  const unit = m ? UNITS.get(m[2]!) : undefined;
  if (!m || unit === undefined) throw new HoldfastError('HF_USAGE', `rate '${text}' is not valid: ${RATE_HELP}`);
  const rate = Math.round(Number(m[1]) * unit);
  if (rate === 0 && Number(m[1]) !== 0) {
    throw new HoldfastError('HF_USAGE', `rate '${text}' is below 1 B/s: ${RATE_HELP}`);
  }
  return rate;
}

/** A time window with its own rate. Days 0 = Sunday … 6 = Saturday; minutes since local midnight. */
export interface RateWindow {
  readonly days: ReadonlySet<number>;
  /** Start minute, 0..1439. */
  readonly start: number;
  /** End minute, 1..1440, exclusive. Before start: the window runs past midnight into the next day. */
  readonly end: number;
  readonly rate: number;
}

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const WINDOW_HELP = "e.g. 'Mon-Fri 08:00-18:00=2MiB/s; Sat,Sun 00:00-24:00=unlimited; 22:00-06:00=20MiB/s'";

function parseDays(spec: string): Set<number> | undefined {
  if (spec === '' || spec === '*') return new Set([0, 1, 2, 3, 4, 5, 6]);
  const days = new Set<number>();
  for (const item of spec.split(',')) {
    const [a, b = a, extra] = item.toLowerCase().split('-').map((d) => d.trim());
    const from = DAYS.indexOf(a!), to = DAYS.indexOf(b!);
    if (from < 0 || to < 0 || extra !== undefined) return undefined;
    for (let d = from; ; d = (d + 1) % 7) {
      days.add(d);
      if (d === to) break;
    }
  }
  return days;
}

/**
 * Parses `--window` values: windows separated by `;`, each
 * `[days] HH:MM-HH:MM=<rate>`. Days: `Mon`..`Sun`, ranges (`Mon-Fri`; `Fri-Mon`
 * wraps), lists (`Sat,Sun`), `*` or omitted for every day. Times are local,
 * 24 h, `24:00` allowed as the end; an end at or before the start runs past
 * midnight and belongs to the start day. Blank text gives no windows.
 * Throws HF_USAGE naming the bad window.
 */
export function parseWindows(text: string): RateWindow[] {
  const out: RateWindow[] = [];
  for (const part of text.split(';').map((p) => p.trim()).filter((p) => p !== '')) {
    const bad = (why: string, cause?: unknown) =>
      new HoldfastError('HF_USAGE', `window '${part}' is not valid: ${why}; ${WINDOW_HELP}`, { cause });
    const m = /^(?:(.*?)\s+)?(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)\s*=\s*(\S+)$/.exec(part);
    if (!m) throw bad('expected [days] HH:MM-HH:MM=rate');
    const days = parseDays(m[1] ?? '');
    if (!days) throw bad(`'${m[1]}' is not a day, day range or list of days`);
    const [h1, m1, h2, m2] = [m[2], m[3], m[4], m[5]].map(Number) as [number, number, number, number];
    const start = h1 * 60 + m1, end = h2 * 60 + m2;
    if (h1 > 23 || m1 > 59 || m2 > 59 || end > 1440) throw bad('a time is not a valid HH:MM');
    if (start === end) throw bad('the window is empty (start equals end)');
    let rate: number;
    try {
      rate = parseRate(m[6]!);
    } catch (err) {
      throw bad(`rate '${m[6]}' is not valid`, err);
    }
    out.push({ days, start, end, rate });
  }
  return out;
}

/** The rate of the first window containing now (local time), else base. */
export function rateAt(base: number, windows: readonly RateWindow[], now: Date): number {
  const day = now.getDay(), minute = now.getHours() * 60 + now.getMinutes();
  for (const w of windows) {
    const hit = w.start < w.end
      ? w.days.has(day) && minute >= w.start && minute < w.end
      : (w.days.has(day) && minute >= w.start) || (w.days.has((day + 6) % 7) && minute < w.end);
    if (hit) return w.rate;
  }
  return base;
}

/** Longest sleep between looks at the rate: a changed or resumed rate is noticed within it. */
const POLL_MS = 1000;

interface Waiter {
  readonly n: number;
  readonly buckets: readonly TokenBucket[];
  /** The bucket whose queue w is working through; it holds the heads of all earlier ones. */
  stage: number;
  resolve(): void;
}

/**
 * A token bucket in bytes.
 *
 * - Rate: bytes per second, a number or a function re-read at every refill
 *   (so a schedule applies within at most one second); a function MUST NOT
 *   throw and MUST return a number ≥ 0 (anything else counts as 0). Infinity never waits;
 *   0 waits, polling the rate each second, until it rises or the signal aborts.
 * - Burst: the bucket holds at most `burst` bytes (default rate/10 at the
 *   current rate, i.e. 100 ms of traffic); it starts full.
 * - Debt: a request is granted once the bucket holds min(n, burst); n is then
 *   taken, so a request larger than the burst leaves the bucket negative and
 *   the next requests wait until the debt is paid. Over any interval of length
 *   T the bytes granted are at most rate·T + max(burst, largest n); callers
 *   SHOULD keep n ≤ rate/2 (or n = rate) so no second exceeds 1.5× the rate.
 * - Fairness: waiters are served strictly FIFO; a request never overtakes an
 *   earlier one, even a smaller one (see takeAll for several buckets).
 */
export class TokenBucket {
  readonly #rate: () => number;
  readonly #burst: number | undefined;
  readonly #clock: RateClock;
  #tokens = Infinity;
  #last: number;
  readonly #queue: Waiter[] = [];
  #pumping = false;
  #wake: AbortController | undefined;

  constructor(options: { rate: number | (() => number); burst?: number; clock?: RateClock }) {
    const { rate, burst, clock = realClock } = options;
    if (typeof rate === 'number' && !(rate >= 0)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `token bucket: rate ${rate} is not a number of bytes per second`);
    }
    if (burst !== undefined && !(burst > 0)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `token bucket: burst ${burst} must be a positive number of bytes`);
    }
    this.#rate = typeof rate === 'number' ? () => rate : () => {
      const r = rate();
      return r >= 0 ? r : 0;
    };
    this.#burst = burst;
    this.#clock = clock;
    this.#last = clock.now();
  }

  /**
   * Resolves when n bytes may be sent (n = 0 still waits its turn). Rejects
   * with HF_INTERRUPTED (cause: the signal's reason) if signal aborts first,
   * HF_INVALID_ARGUMENT if n is negative or not finite.
   */
  take(n: number, signal?: AbortSignal): Promise<void> {
    return TokenBucket.takeAll([this], n, signal);
  }

  /**
   * Takes n from every bucket at the same instant; nothing is taken while
   * waiting. A request queues in buckets[0]; once first there and that bucket
   * is ready, it keeps that place and queues in the next bucket, and so on; it
   * is granted when first and ready in all. So a slow bucket holds up only its
   * own queue, never a later (shared) one. Every caller MUST list shared
   * buckets after specific ones, in one consistent order (e.g. [target,
   * global]); opposite orders can deadlock.
   */
  static takeAll(list: readonly TokenBucket[], n: number, signal?: AbortSignal): Promise<void> {
    const buckets = [...new Set(list)];
    if (!(n >= 0 && Number.isFinite(n))) {
      return Promise.reject(new HoldfastError('HF_INVALID_ARGUMENT', `rate limit: cannot take ${n} bytes`));
    }
    if (signal?.aborted) return Promise.reject(interrupted(signal));
    if (buckets.every((b) => b.#queue.length === 0 && b.#delay(n) === 0)) {
      for (const b of buckets) b.#tokens -= n;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        for (const b of buckets.slice(0, w.stage + 1)) {
          b.#queue.splice(b.#queue.indexOf(w), 1);
          b.#kick();
        }
        reject(interrupted(signal!));
      };
      const w: Waiter = { n, buckets, stage: 0, resolve: () => (signal?.removeEventListener('abort', onAbort), resolve()) };
      signal?.addEventListener('abort', onAbort, { once: true });
      buckets[0]!.#queue.push(w);
      buckets[0]!.#kick();
    });
  }

  #refill(rate: number): void {
    const now = this.#clock.now();
    const cap = this.#burst ?? rate / 10;
    this.#tokens = rate === Infinity ? Infinity : Math.min(cap, this.#tokens + (rate * (now - this.#last)) / 1000);
    this.#last = now;
  }

  /** Milliseconds until n may be granted (0: now). */
  #delay(n: number): number {
    const rate = this.#rate();
    this.#refill(rate);
    if (rate === 0) return POLL_MS;
    const need = Math.min(n, this.#burst ?? rate / 10);
    if (this.#tokens >= need * (1 - 1e-12)) return 0;
    return Math.min(POLL_MS, Math.ceil(((need - this.#tokens) * 1000) / rate));
  }

  /** Serves the queue (again), or cuts the pump's sleep short when the queue changed. */
  #kick(): void {
    if (this.#pumping) this.#wake?.abort();
    else void this.#pump();
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      // Kicks to other buckets may re-enter this pump's queue; each pass re-reads the head.
      for (let w = this.#queue[0]; w; w = this.#queue[0]) {
        if (w.buckets[w.stage] !== this) return; // w holds our head while it queues further on
        const last = w.stage === w.buckets.length - 1;
        const ms = last ? Math.max(...w.buckets.map((b) => b.#delay(w.n))) : this.#delay(w.n);
        if (ms > 0) {
          this.#wake = new AbortController();
          await this.#clock.sleep(ms, this.#wake.signal).catch(() => {});
          this.#wake = undefined;
        } else if (!last) {
          const next = w.buckets[++w.stage]!;
          next.#queue.push(w);
          next.#kick();
        } else {
          for (const b of w.buckets) {
            b.#tokens -= w.n;
            b.#queue.shift();
          }
          w.resolve();
          for (const b of w.buckets) if (b !== this) b.#kick();
        }
      }
    } finally {
      this.#pumping = false;
    }
  }
}

/**
 * Draws every request from several buckets at once, e.g. `new RateLimiter([target, global])`:
 * specific buckets first, shared ones last (see TokenBucket.takeAll).
 */
export class RateLimiter {
  readonly #buckets: readonly TokenBucket[];

  constructor(buckets: readonly TokenBucket[]) {
    this.#buckets = [...buckets];
  }

  /** Resolves when n bytes may be sent under every bucket; see TokenBucket.takeAll. */
  take(n: number, signal?: AbortSignal): Promise<void> {
    return TokenBucket.takeAll(this.#buckets, n, signal);
  }
}

function interrupted(signal: AbortSignal): HoldfastError {
  return new HoldfastError('HF_INTERRUPTED', 'waiting for bandwidth was interrupted', { cause: signal.reason });
}
