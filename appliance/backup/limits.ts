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

  release(n = 1): void {
    this.#free += n;
    while (this.#waiters.length > 0 && this.#free >= this.#waiters[0]!.n) {
      const w = this.#waiters.shift()!;
      this.#free -= w.n;
      w.resolve();
    }
  }
}
