import { setTimeout as sleep } from 'node:timers/promises';

import { HoldfastError, hasCode } from '../errors/index.ts';

/**
 * How a source re-establishes a dropped connection: up to `attempts`
 * connection attempts, waiting `firstWaitMs` before the first and twice as
 * long before each next one. The defaults (5 attempts, 1 s doubling: 1, 2,
 * 4, 8 and 16 s, 31 s in all, plus at most one connect timeout per attempt)
 * give up within about three minutes even when the server's packets are
 * dropped rather than refused. The same bound applies to one operation: it
 * is repeated after at most `attempts` reconnects in a row without progress.
 */
export interface ReconnectPolicy {
  attempts: number;
  firstWaitMs: number;
}

export const DEFAULT_RECONNECT: ReconnectPolicy = { attempts: 5, firstWaitMs: 1000 };

/** What a Reconnector needs of a connection. */
export interface Connection {
  readonly closed: boolean;
  disconnect(): Promise<void>;
}

export interface ReconnectorOptions<C extends Connection> {
  /** For messages: the source's location. */
  location: string;
  policy: ReconnectPolicy;
  /** Opens a new connection (coded errors: HF_SOURCE_UNREACHABLE, …). */
  connect(): Promise<C>;
}

/**
 * One source's connection to its server, re-established with a bounded
 * policy when it drops (the retry layer the SMB and SFTP sources share).
 *
 * - Everyone who saw the same connection fail waits for one reconnect cycle.
 * - A cycle that gives up (its attempts ran out, or the server refused the
 *   new connection: a changed password or host key) fails the source for
 *   good: that call and every later one reject at once with
 *   HF_SOURCE_DISCONNECTED naming the last cause; no new cycle starts.
 * - After close(), every call rejects with HF_SOURCE_DISCONNECTED.
 */
export class Reconnector<C extends Connection> {
  readonly policy: ReconnectPolicy;
  readonly #o: ReconnectorOptions<C>;
  #current: C;
  #cycle: Promise<C> | null = null;
  #failed: HoldfastError | null = null;
  #closed = false;

  constructor(first: C, o: ReconnectorOptions<C>) {
    this.#current = first;
    this.#o = o;
    this.policy = o.policy;
  }

  /** The connection in use (it may have dropped). */
  get current(): C {
    return this.#current;
  }

  /** Whether the source has given up on its server (or was closed). */
  get failed(): boolean {
    return this.#failed !== null || this.#closed;
  }

  /** The live connection, re-established first if it dropped. */
  async live(): Promise<C> {
    this.#throwIfFailed();
    if (this.#cycle) return this.#cycle;
    if (this.#current.closed) return this.reconnect(this.#current);
    return this.#current;
  }

  /**
   * Replaces `failed` with a new connection: one cycle for everyone who saw
   * the same connection fail. Rejects with HF_SOURCE_DISCONNECTED when the
   * cycle gives up, and from then on at once.
   */
  async reconnect(failed: C): Promise<C> {
    this.#throwIfFailed();
    if (this.#current !== failed && !this.#current.closed) return this.#current;
    this.#cycle ??= this.#runCycle(failed).finally(() => { this.#cycle = null; });
    return this.#cycle;
  }

  /**
   * Runs fn on the live connection; while it fails with an error `retriable`
   * accepts (the connection dropped under it), reconnects and runs it again,
   * at most policy.attempts times. Then: HF_SOURCE_DISCONNECTED (the source
   * fails for good), unless the last error was something else that broke the
   * connection (`keep` says so: a corrupted response), which is rethrown as
   * it is: a failure of that operation only.
   */
  async run<T>(fn: (c: C) => Promise<T>, retriable: (err: unknown, c: C) => boolean, keep?: (err: unknown) => boolean): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const c = await this.live();
      try {
        return await fn(c);
      } catch (err) {
        if (this.#closed) throw this.#closedError();
        if (!retriable(err, c)) throw err;
        if (attempt >= this.policy.attempts) throw this.exhausted(err, keep);
        await this.reconnect(c);
      }
    }
  }

  /**
   * The error for an operation whose connection dropped `policy.attempts`
   * times in a row: `err` itself when `keep` accepts it, else the source
   * gives up (HF_SOURCE_DISCONNECTED, from then on for every call).
   */
  exhausted(err: unknown, keep?: (err: unknown) => boolean): unknown {
    if (keep?.(err)) return err;
    const n = this.policy.attempts;
    return this.#giveUp(err, `the connection dropped ${n + 1} times in a row while one operation was repeated`);
  }

  /** Ends the connection; idempotent. Later calls reject with HF_SOURCE_DISCONNECTED. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#current.disconnect();
  }

  async #runCycle(failed: C): Promise<C> {
    failed.disconnect().catch(() => undefined);
    let wait = this.policy.firstWaitMs;
    let last: unknown = null;
    const n = this.policy.attempts;
    for (let i = 0; i < n; i++, wait *= 2) {
      await sleep(wait);
      if (this.#closed) throw this.#closedError();
      try {
        const c = await this.#o.connect();
        if (this.#closed) {
          await c.disconnect();
          throw this.#closedError();
        }
        this.#current = c;
        return c;
      } catch (err) {
        if (this.#closed) throw this.#closedError();
        last = err;
        // Refused (logon, host key, share gone): trying again will not help.
        if (!hasCode(err, 'HF_SOURCE_UNREACHABLE') && !hasCode(err, 'HF_SOURCE_DISCONNECTED') && !hasCode(err, 'HF_SOURCE_PROTOCOL')) {
          throw this.#giveUp(err, 'the connection dropped and the server refused a new one');
        }
      }
    }
    throw this.#giveUp(last, `the connection dropped and ${n} attempt${n === 1 ? '' : 's'} to re-establish it failed`);
  }

  #giveUp(err: unknown, what: string): HoldfastError {
    const last = err instanceof Error ? ` (last: ${err.message})` : '';
    this.#failed ??= new HoldfastError('HF_SOURCE_DISCONNECTED',
      `${this.#o.location}: ${what}${last}; check the server and the network, then run the backup again`,
      { cause: err });
    return this.#failed;
  }

  #throwIfFailed(): void {
    if (this.#closed) throw this.#closedError();
    if (this.#failed) throw this.#failed;
  }

  #closedError(): HoldfastError {
    return new HoldfastError('HF_SOURCE_DISCONNECTED', `${this.#o.location}: the source was closed`);
  }
}
