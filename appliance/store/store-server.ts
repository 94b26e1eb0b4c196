import type { AddressInfo } from 'node:net';
import tls from 'node:tls';

import { HoldfastError } from '../errors/index.ts';
import { peerIdentity } from '../pki/index.ts';
import { ALPN } from '../protocol/index.ts';
import type { StoreBackend } from './store-backend.ts';
import { StoreSession } from './store-session.ts';

export interface StoreTls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  crl?: Buffer;
}

export interface StoreServerOptions {
  backend: StoreBackend;
  tls: StoreTls;
  /** The store's name, told to clients in WELCOME. */
  name: string;
  graceSeconds: number;
  quota: number | null;
  maxStreams?: number;
  helloTimeoutMs?: number;
  idleTimeoutMs?: number;
  now?: () => Date;
  log?: (event: Record<string, unknown>) => void;
}

function secureOptions(t: StoreTls): tls.SecureContextOptions {
  return { cert: t.cert, key: t.key, ca: t.ca, ...(t.crl ? { crl: t.crl } : {}), minVersion: 'TLSv1.3' };
}

/**
 * The store role's network side: TLS 1.3 with mutual certificates, one
 * StoreSession per connection. Stateless: everything lives in the backend,
 * so several servers (processes) may front one directory.
 */
export class StoreServer {
  readonly #o: StoreServerOptions;
  readonly #server: tls.Server;
  readonly #sockets = new Set<tls.TLSSocket>();
  refused = 0;

  constructor(options: StoreServerOptions) {
    this.#o = options;
    const log = options.log ?? (() => undefined);
    this.#server = tls.createServer({
      ...secureOptions(options.tls),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: [ALPN],
      handshakeTimeout: options.helloTimeoutMs ?? 10_000,
    });
    this.#server.on('tlsClientError', (err, socket) => {
      this.refused++;
      log({ event: 'tls-refused', remote: socket.remoteAddress, message: err.message });
    });
    this.#server.on('secureConnection', (socket) => {
      if (socket.alpnProtocol !== ALPN) {
        log({ event: 'refused', remote: socket.remoteAddress, message: 'the client did not select the holdfast/1 protocol (ALPN)' });
        socket.destroy();
        return;
      }
      let tenant: string;
      try {
        const id = peerIdentity(socket.getPeerCertificate());
        if (id.kind !== 'appliance') throw new HoldfastError('HF_TLS_REFUSED', `a ${id.kind} certificate (${id.name}) cannot act as an appliance`);
        tenant = id.name;
      } catch (err) {
        this.refused++;
        log({ event: 'refused', remote: socket.remoteAddress, message: (err as Error).message });
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      new StoreSession(socket, tenant, {
        backend: options.backend,
        store: options.name,
        graceSeconds: options.graceSeconds,
        quota: options.quota,
        maxStreams: options.maxStreams ?? 64,
        helloTimeoutMs: options.helloTimeoutMs ?? 10_000,
        idleTimeoutMs: options.idleTimeoutMs ?? 90_000,
        now: options.now ?? (() => new Date()),
        log,
      });
    });
  }

  get connections(): number {
    return this.#sockets.size;
  }

  listen(host: string, port: number): Promise<AddressInfo> {
    const options = this.#o;
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host, port, backlog: 2048 }, () => {
        this.#server.off('error', reject);
        // After listening, an error (EMFILE on accept) is logged; it must not end the process.
        this.#server.on('error', (err) => (options.log ?? (() => undefined))({ event: 'server-error', message: err.message }));
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  /** Replaces certificates or the CRL for new connections (SIGHUP). */
  reloadTls(t: StoreTls): void {
    this.#server.setSecureContext(secureOptions(t));
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
    await this.#o.backend.close();
  }
}
