import { parse, validate } from 'node-cron';

import { HoldfastError } from '../errors/index.ts';
import type { Clock } from './clock.ts';
import type { ScheduleRecord, StateStore } from './state-store.ts';

const MINUTE = 60_000;
/** How far back a tick looks for a missed run (the engine was down, the box was off). */
const CATCH_UP_MS = 7 * 24 * 3_600_000;

/** Validates a five-field cron expression (minute hour day-of-month month day-of-week). */
export function validateCron(expr: unknown): string {
  if (typeof expr !== 'string' || expr.trim().split(/\s+/).length !== 5 || !validate(expr.trim())) {
    throw new HoldfastError('HF_INVALID_ARGUMENT',
      `${JSON.stringify(expr)} is not a cron expression of five fields (minute hour day-of-month month day-of-week), e.g. "0 * * * *" (hourly) or "30 2 * * *" (daily at 02:30)`);
  }
  return expr.trim();
}

/**
 * A parsed cron expression in local time: node-cron parses it (names,
 * ranges, steps, "L" for the month's last day); matching uses its fields
 * with node-cron's rules (every field must match, day of month AND day of
 * week). node-cron's own matcher formats each date through Intl (about 20
 * µs a minute), too slow to walk days of minutes.
 */
export class CronSpec {
  readonly #minute: Set<number>;
  readonly #hour: Set<number>;
  readonly #dom: Set<number>;
  readonly #lastDom: boolean;
  readonly #month: Set<number>;
  readonly #dow: Set<number>;
  readonly #hours: number[];
  readonly #minutes: number[];

  constructor(expr: string) {
    const f = parse(validateCron(expr));
    this.#minute = new Set(f.minute);
    this.#hour = new Set(f.hour);
    this.#dom = new Set(f.dayOfMonth.filter((d): d is number => typeof d === 'number'));
    this.#lastDom = f.dayOfMonth.includes('L');
    this.#month = new Set(f.month);
    this.#dow = new Set(f.dayOfWeek.filter((d): d is number => typeof d === 'number').map((d) => d % 7));
    this.#hours = [...this.#hour].sort((a, b) => a - b);
    this.#minutes = [...this.#minute].sort((a, b) => a - b);
  }

  #dayMatches(d: Date): boolean {
    const last = new Date(d.getFullYear(), d.getMonth() + 1, 0).getDate();
    const dom = this.#dom.has(d.getDate()) || (this.#lastDom && d.getDate() === last);
    return dom && this.#month.has(d.getMonth() + 1) && this.#dow.has(d.getDay());
  }

  /** Whether the minute starting at t (local time) matches. */
  matches(t: number): boolean {
    const d = new Date(t);
    return d.getSeconds() === 0 && this.#minute.has(d.getMinutes()) && this.#hour.has(d.getHours()) && this.#dayMatches(d);
  }

  /** The first matching minute after t (local time), within four years (a 29 February), or null. */
  next(t: number): number | null {
    const start = new Date(t);
    for (let day = 0; day <= 1462; day++) {
      const d = new Date(start.getFullYear(), start.getMonth(), start.getDate() + day);
      if (!this.#dayMatches(d)) continue;
      for (const h of this.#hours) {
        for (const m of this.#minutes) {
          const c = new Date(d.getFullYear(), d.getMonth(), d.getDate(), h, m).getTime();
          if (c > t && this.matches(c)) return c;
        }
      }
    }
    return null;
  }
}

/**
 * Fires schedules (cron expressions, local time) from an injected clock. A tick looks at every minute since a schedule last
 * fired (at most 7 days back) and fires it once if any matched: a run missed
 * while the engine was down happens when it is back, once, not once per
 * missed minute. A new schedule fires first at its next match. lastFire is
 * stored before the job is requested, so a crash in between skips a run
 * rather than doubling it; the job itself is durable once requested.
 */
export class Scheduler {
  readonly #state: StateStore;
  readonly #clock: Clock;
  readonly #fire: (s: ScheduleRecord, at: number) => Promise<void>;
  readonly #onError: (s: ScheduleRecord, err: unknown) => void;
  readonly #specs = new Map<string, CronSpec>();
  #timer: NodeJS.Timeout | null = null;
  #ticking: Promise<ScheduleRecord[]> | null = null;

  constructor(options: {
    state: StateStore; clock: Clock;
    fire: (s: ScheduleRecord, at: number) => Promise<void>;
    onError?: (s: ScheduleRecord, err: unknown) => void;
  }) {
    this.#state = options.state;
    this.#clock = options.clock;
    this.#fire = options.fire;
    this.#onError = options.onError ?? (() => undefined);
  }

  /** Checks every schedule now; resolves with the ones that fired. Ticks never overlap. */
  tick(): Promise<ScheduleRecord[]> {
    this.#ticking ??= this.#tick().finally(() => { this.#ticking = null; });
    return this.#ticking;
  }

  async #tick(): Promise<ScheduleRecord[]> {
    const now = this.#clock.now();
    const fired: ScheduleRecord[] = [];
    for (const s of await this.#state.schedules()) {
      if (!s.enabled) continue;
      if (s.lastFire === null) {
        await this.#state.updateSchedule(s.id, { lastFire: now });
        continue;
      }
      if (!this.#due(s, now)) continue;
      await this.#state.updateSchedule(s.id, { lastFire: now });
      try {
        await this.#fire(s, now);
        fired.push(s);
      } catch (err) {
        this.#onError(s, err);
      }
    }
    return fired;
  }

  /** Whether a minute in (lastFire, now] matches the schedule. */
  #due(s: ScheduleRecord, now: number): boolean {
    const from = Math.max(s.lastFire ?? now, now - CATCH_UP_MS);
    const n = this.#spec(s.cron).next(from);
    return n !== null && n <= now;
  }

  /** When a cron expression next fires after now (for the console), or null. */
  next(cron: string, after = this.#clock.now()): number | null {
    return this.#spec(cron).next(after);
  }

  #spec(cron: string): CronSpec {
    let m = this.#specs.get(cron);
    if (!m) {
      m = new CronSpec(cron);
      this.#specs.set(cron, m);
    }
    return m;
  }

  /** Ticks a second after every minute boundary of the real clock. */
  start(): void {
    const arm = () => {
      const now = Date.now();
      this.#timer = setTimeout(() => {
        void this.tick().finally(arm);
      }, MINUTE - (now % MINUTE) + 1000);
      this.#timer.unref();
    };
    if (!this.#timer) arm();
  }

  async stop(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#ticking;
  }
}
