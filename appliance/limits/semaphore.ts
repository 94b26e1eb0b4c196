/** A counting semaphore over units (slots or bytes). FIFO. */
export class Semaphore {
  #free: number;
  readonly #waiters: { n: number; resolve: () => void }[] = [];

  constructor(capacity: number) {
    this.#free = capacity;
  }

  /** Waits for n units; n may not exceed the capacity. */
  acquire(n = 1): Promise<void> | void {
    if (this.#waiters.length === 0 && this.#free >= n) {
      this.#free -= n;
      return;
    }
    return new Promise((resolve) => this.#waiters.push({ n, resolve }));
  }

  /** Takes n units if they are free now; never waits. */
  tryAcquire(n = 1): boolean {
    if (this.#waiters.length > 0 || this.#free < n) return false;
    this.#free -= n;
    return true;
  }

  release(n = 1): void {
    this.#free += n;
    while (this.#waiters.length > 0 && this.#free >= this.#waiters[0]!.n) {
      const w = this.#waiters.shift()!;
      this.#free -= w.n;
      w.resolve();
    }
  }
}
