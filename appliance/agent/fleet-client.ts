import tls, { type PeerCertificate } from 'node:tls';

import { Agent, type Dispatcher, request } from 'undici';

import { HoldfastError } from '../errors/index.ts';

export interface FleetTls {
  /** The vendor CA (PEM): the fleet's certificate must chain to it and be a fleet certificate (OU=fleet). */
  ca: string;
  /** The box's certificate and key (PEM), once enrolled. */
  cert?: string;
  key?: string;
}

/** A fleet certificate, not merely one from the vendor CA (a store's would chain too). */
function checkFleetIdentity(host: string, cert: PeerCertificate): Error | undefined {
  const e = tls.checkServerIdentity(host, cert);
  if (e) return e;
  const ou = cert.subject?.OU;
  if ((Array.isArray(ou) ? ou : [ou]).includes('fleet')) return undefined;
  return new Error(`the server's certificate (${cert.subject?.CN ?? '?'}) is not a fleet certificate (OU=${String(ou)})`);
}

/**
 * The box's HTTPS client for the fleet service (undici): the vendor CA and,
 * once enrolled, the box's certificate. Answers are JSON; an error answer
 * rejects with its HF_ code (401 is HF_FLEET_UNAUTHORIZED); a connection
 * that fails is HF_FLEET_UNREACHABLE.
 */
export class FleetClient {
  readonly url: string;
  readonly dispatcher: Agent;

  constructor(url: string, t: FleetTls) {
    this.url = url.replace(/\/$/, '');
    this.dispatcher = new Agent({
      connect: { ca: t.ca, ...(t.cert ? { cert: t.cert, key: t.key } : {}), checkServerIdentity: checkFleetIdentity, timeout: 15_000 },
      keepAliveTimeout: 20_000, headersTimeout: 60_000, bodyTimeout: 120_000,
    });
  }

  async #send(method: Dispatcher.HttpMethod, path: string, body: Buffer | string | undefined, type: string | undefined, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    try {
      return await request(`${this.url}${path}`, {
        method, dispatcher: this.dispatcher, ...(body !== undefined ? { body, headers: { 'content-type': type! } } : {}), ...(signal ? { signal } : {}),
      });
    } catch (cause) {
      throw new HoldfastError('HF_FLEET_UNREACHABLE', `the fleet service ${this.url} cannot be reached: ${(cause as Error).message}`, { cause });
    }
  }

  static async #fail(r: Dispatcher.ResponseData, what: string): Promise<never> {
    const text = await r.body.text().catch(() => '');
    let e: { code?: string; message?: string } = {};
    try {
      e = (JSON.parse(text) as { error?: typeof e }).error ?? {};
    } catch {
      // not JSON: keep the status
    }
    const code = r.statusCode === 401 ? 'HF_FLEET_UNAUTHORIZED' : (e.code?.startsWith('HF_') ? e.code : 'HF_FLEET_UNREACHABLE');
    throw Object.assign(new HoldfastError(code as 'HF_FLEET_UNREACHABLE', `${what}: ${e.message ?? `HTTP ${r.statusCode}`}`), { status: r.statusCode });
  }

  async call<T = Record<string, unknown>>(method: Dispatcher.HttpMethod, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const r = await this.#send(method, path, body === undefined ? undefined : JSON.stringify(body), body === undefined ? undefined : 'application/json', signal);
    if (r.statusCode >= 400) return FleetClient.#fail(r, `${method} ${path}`);
    const text = await r.body.text();
    return (text ? JSON.parse(text) : {}) as T;
  }

  async getBuffer(path: string): Promise<Buffer> {
    return (await this.getWithHeaders(path)).body;
  }

  async getWithHeaders(path: string): Promise<{ body: Buffer; headers: Record<string, string | string[] | undefined> }> {
    const r = await this.#send('GET', path, undefined, undefined);
    if (r.statusCode >= 400) return FleetClient.#fail(r, `GET ${path}`);
    return { body: Buffer.from(await r.body.arrayBuffer()), headers: r.headers };
  }

  async putBuffer<T = Record<string, unknown>>(path: string, data: Buffer): Promise<T> {
    const r = await this.#send('PUT', path, data, 'application/octet-stream');
    if (r.statusCode >= 400) return FleetClient.#fail(r, `PUT ${path}`);
    return await r.body.json() as T;
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}
