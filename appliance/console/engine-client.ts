import { Agent, type Dispatcher, request } from 'undici';

import { HoldfastError } from '../errors/index.ts';

/**
 * The appliance API over the engine's unix socket (undici). Used by the
 * console (with a user's session) and by tests and tools (with the local
 * token). Answers are the engine's JSON; an HF_* error answer rejects with
 * a HoldfastError of that code.
 */
export class EngineClient {
  readonly dispatcher: Agent;
  readonly #auth: string | null;

  constructor(socketPath: string, auth: string | null = null) {
    this.dispatcher = new Agent({ connect: { socketPath }, keepAliveTimeout: 10_000, connections: 64, pipelining: 1 });
    this.#auth = auth;
  }

  /** A raw request (the console's proxy streams these). */
  raw(method: Dispatcher.HttpMethod, path: string, headers: Record<string, string>, body?: string | Buffer | null,
    signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    return request(`http://engine${path}`, {
      method, headers: { ...(this.#auth ? { authorization: this.#auth } : {}), ...headers },
      ...(body !== undefined && body !== null ? { body } : {}), dispatcher: this.dispatcher, ...(signal ? { signal } : {}),
    }).catch((cause: unknown) => {
      throw new HoldfastError('HF_ENGINE_UNAVAILABLE', `the engine does not answer on its socket: ${(cause as Error).message}; is holdfast-engine running?`, { cause });
    });
  }

  /** A JSON call; rejects with the engine's coded error. */
  async call<T = Record<string, unknown>>(method: Dispatcher.HttpMethod, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const r = await this.raw(method, path, { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      body !== undefined ? JSON.stringify(body) : undefined);
    const text = await r.body.text();
    const json = text ? JSON.parse(text) as Record<string, unknown> : {};
    if (r.statusCode >= 400) {
      const e = (json.error ?? {}) as { code?: string; message?: string; details?: Record<string, unknown> };
      throw Object.assign(new HoldfastError((e.code ?? 'HF_IO') as 'HF_IO', e.message ?? `HTTP ${r.statusCode}`, e.details ? { details: e.details } : {}), { status: r.statusCode });
    }
    return json as T;
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}
