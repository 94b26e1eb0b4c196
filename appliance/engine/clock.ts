/**
 * Time, injected where tests need to control it (the scheduler, sessions,
 * lockout). now() is milliseconds since the epoch.
 */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock a test moves by hand. */
export class ManualClock implements Clock {
  #t: number;

  constructor(start: number | Date) {
    this.#t = typeof start === 'number' ? start : start.getTime();
  }

  now(): number {
    return this.#t;
  }

  set(t: number | Date): void {
    this.#t = typeof t === 'number' ? t : t.getTime();
  }

  advance(ms: number): void {
    this.#t += ms;
  }
}
