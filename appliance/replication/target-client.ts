import { HoldfastError, errorCode } from '../errors/index.ts';
import { type ClientTls, type Endpoint, StoreConnection, endpointText, isConnectionError } from './store-connection.ts';

export interface TargetClientOptions {
  /** Name for messages (the target's name). */
  name: string;
  endpoints: Endpoint[];
  tls: ClientTls;
  /** Start at a random endpoint instead of the first. */
  spread?: boolean;
  /** Rounds over every endpoint before giving up. */
  rounds?: number;
  /** Back-off between rounds, ms (doubled each round). */
  backoffMs?: number;
  signal?: AbortSignal;
  onEvent?: (e: { event: 'connected' | 'failed'; endpoint: string; message?: string }) => void;
}

/**
 * A target's endpoints behind one connection at a time: connect in order
 * (or from a random start with spread), and after a connection fails, move
 * on to the next endpoint. TLS refusals are not retried elsewhere in a loop
 * forever: when every endpoint refuses, the refusal is what is reported.
 */
export class TargetClient {
  readonly #o: TargetClientOptions;
  #current: StoreConnection | null = null;
  #connecting: Promise<StoreConnection> | null = null;
  #index: number;
  failovers = 0;
  /** Endpoints that served this client, in order of use. */
  readonly used: string[] = [];

  constructor(options: TargetClientOptions) {
    if (options.endpoints.length === 0) throw new HoldfastError('HF_INVALID_ARGUMENT', `target ${options.name} has no endpoint`);
    this.#o = options;
    this.#index = options.spread ? Math.floor(Math.random() * options.endpoints.length) : 0;
  }

  /** Payload bytes sent by connections closed so far plus the current one. */
  #sentBefore = 0;
  get dataSent(): number {
    return this.#sentBefore + (this.#current?.dataSent ?? 0);
  }

  /** The live connection, connecting (with failover) when there is none. */
  connection(): Promise<StoreConnection> {
    if (this.#current && !this.#current.closed) return Promise.resolve(this.#current);
    this.#connecting ??= this.#connect().finally(() => { this.#connecting = null; });
    return this.#connecting;
  }

  /** Marks the connection as failed, so the next call moves on to the next endpoint. */
  failed(conn: StoreConnection, err: unknown): void {
    if (this.#current !== conn) return;
    this.#o.onEvent?.({ event: 'failed', endpoint: endpointText(conn.endpoint), message: (err as Error)?.message });
    this.#sentBefore += conn.dataSent;
    conn.close();
    this.#current = null;
    this.#index = (this.#index + 1) % this.#o.endpoints.length;
    this.failovers++;
  }

  async #connect(): Promise<StoreConnection> {
    const eps = this.#o.endpoints;
    const rounds = this.#o.rounds ?? 3;
    let backoff = this.#o.backoffMs ?? 1000;
    let last: unknown;
    let refusals = 0;
    let tries = 0;
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < eps.length; i++) {
        this.#o.signal?.throwIfAborted();
        const ep = eps[this.#index]!;
        tries++;
        try {
          const c = await StoreConnection.connect(ep, this.#o.tls, this.#o.signal);
          this.#current = c;
          this.used.push(endpointText(ep));
          this.#o.onEvent?.({ event: 'connected', endpoint: endpointText(ep) });
          return c;
        } catch (err) {
          if (errorCode(err) === 'HF_INTERRUPTED') throw err;
          last = err;
          if (errorCode(err) === 'HF_TLS_REFUSED' || errorCode(err) === 'HF_PROTO_VERSION') refusals++;
          this.#o.onEvent?.({ event: 'failed', endpoint: endpointText(ep), message: (err as Error).message });
          this.#index = (this.#index + 1) % eps.length;
        }
      }
      if (refusals === tries) throw last; // certificates do not fix themselves
      if (round + 1 < rounds) {
        await new Promise((resolve) => setTimeout(resolve, backoff));
        backoff *= 2;
      }
    }
    if (errorCode(last) === 'HF_TLS_REFUSED') throw last;
    throw new HoldfastError('HF_TARGET_UNREACHABLE',
      `target ${this.#o.name}: no endpoint answered (${eps.map(endpointText).join(', ')}); last error: ${(last as Error)?.message}. Check the network and that the store is running.`,
      { cause: last });
  }

  /**
   * Runs fn with a connection; when the connection fails under it, moves to
   * the next endpoint and runs fn again (fn must be safe to rerun: it asks
   * the store what it has before sending).
   */
  async run<T>(fn: (c: StoreConnection) => Promise<T>): Promise<T> {
    const limit = 10 * this.#o.endpoints.length;
    for (let failures = 0; ; failures++) {
      const c = await this.connection();
      try {
        return await fn(c);
      } catch (err) {
        if (!isConnectionError(err) && !c.closed) throw err;
        this.failed(c, err);
        if (failures + 1 >= limit) {
          throw new HoldfastError('HF_TARGET_UNREACHABLE',
            `target ${this.#o.name}: the connection failed ${limit} times; last error: ${(err as Error).message}`, { cause: err });
        }
      }
    }
  }

  close(): void {
    if (this.#current) {
      this.#sentBefore += this.#current.dataSent;
      this.#current.close();
    }
    this.#current = null;
  }
}
