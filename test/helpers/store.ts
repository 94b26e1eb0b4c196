import { type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';

import { initCa, issueCertificate } from '../../appliance/pki/index.ts';
import { startCli } from './cli.ts';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Pki {
  dir: string;
  ca: string;
  crl: string;
  /** Paths of NAME.crt and NAME.key. */
  cert(name: string): { cert: string; key: string };
}

/** A CA with a store certificate `store` and appliance certificates for each tenant. */
export async function makePki(dir: string, tenants: string[] = ['acme'], stores: string[] = ['store']): Promise<Pki> {
  await initCa(dir, { name: 'Test CA' });
  for (const s of stores) await issueCertificate(dir, { name: s, kind: 'store' });
  for (const t of tenants) await issueCertificate(dir, { name: t, kind: 'appliance' });
  return {
    dir,
    ca: path.join(dir, 'ca.crt'),
    crl: path.join(dir, 'crl.pem'),
    cert: (name) => ({ cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) }),
  };
}

export interface StoreProcess {
  child: ChildProcess;
  pid: number;
  port: number;
  endpoint: string;
  dir: string;
  stderr: () => string;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM, and wait for the exit; resolves with the exit code. */
  stop(): Promise<number | null>;
}

/**
 * Starts `holdfast store serve` on 127.0.0.1 (port 0 unless given), waits for
 * its "listening" JSON line, and kills it by pid at teardown.
 */
export async function startStore(t: Teardown, o: { dir?: string; pki: Pki; port?: number; store?: string; grace?: string; quota?: string; crl?: boolean; name?: string; backend?: string[]; env?: Record<string, string> }): Promise<StoreProcess> {
  const st = o.pki.cert(o.store ?? 'store');
  const where = o.backend ?? ['--dir', o.dir!];
  const args = ['--json', 'store', 'serve', ...where, '--listen', `127.0.0.1:${o.port ?? 0}`, '--cert', st.cert, '--key', st.key, '--ca', o.pki.ca];
  if (o.crl !== false) args.push('--crl', o.pki.crl);
  if (o.grace) args.push('--grace', o.grace);
  if (o.quota) args.push('--quota', o.quota);
  if (o.name) args.push('--name', o.name);
  const child = startCli(args, o.env ?? {});
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString('utf8')).slice(-200_000); });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let alive = true;
  void exited.then(() => { alive = false; });
  t.teardown(() => { if (alive && child.pid) process.kill(child.pid, 'SIGKILL'); });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`store did not start in 15 s: ${stderr}`)), 15_000);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString('utf8');
      const line = stdout.split('\n').find((l) => l.startsWith('{"listening"'));
      if (line) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { listening: { port: number } }).listening.port);
      }
    });
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`store exited ${code}: ${stderr}`)); });
  });
  return {
    child, pid: child.pid!, port, endpoint: `127.0.0.1:${port}`, dir: o.dir ?? '', stderr: () => stderr,
    kill: async () => { if (alive) process.kill(child.pid!, 'SIGKILL'); await exited; },
    stop: async () => { if (alive) process.kill(child.pid!, 'SIGTERM'); return exited; },
  };
}

/**
 * A TCP proxy on 127.0.0.1 that counts the bytes going each way: what the
 * tests call "bytes on the wire" (TLS records, frames, everything).
 */
export class CountingProxy {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  toServer = 0;
  toClient = 0;
  /** Bytes to the server per whole second since the first byte (for the rate test). */
  readonly perSecond: number[] = [];
  #first = 0;
  firstByteAt = 0;
  lastByteAt = 0;
  port = 0;
  /** When set, the first connection to carry more than this many bytes to the client is cut (a pulled cable), once. */
  #cutAfter: number | null = null;
  cuts = 0;

  constructor(targetPort: number) {
    this.#server = net.createServer((client) => {
      const upstream = net.connect(targetPort, '127.0.0.1');
      this.#sockets.add(client);
      this.#sockets.add(upstream);
      client.on('data', (d: Buffer) => {
        const now = performance.now();
        if (this.#first === 0) this.#first = now;
        if (this.firstByteAt === 0) this.firstByteAt = now;
        this.lastByteAt = now;
        this.toServer += d.length;
        const sec = Math.floor((now - this.#first) / 1000);
        while (this.perSecond.length <= sec) this.perSecond.push(0);
        this.perSecond[sec]! += d.length;
      });
      let relayed = 0;
      upstream.on('data', (d: Buffer) => {
        this.toClient += d.length;
        relayed += d.length;
        if (this.#cutAfter !== null && relayed > this.#cutAfter) {
          this.#cutAfter = null;
          this.cuts++;
          client.destroy();
          upstream.destroy();
        }
      });
      client.pipe(upstream);
      upstream.pipe(client);
      const close = () => { client.destroy(); upstream.destroy(); this.#sockets.delete(client); this.#sockets.delete(upstream); };
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', close);
      upstream.on('close', close);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Cuts the next connection that relays more than `bytes` to the client. */
  cutOnceAfter(bytes: number): void {
    this.#cutAfter = bytes;
  }

  reset(): void {
    this.toServer = 0;
    this.toClient = 0;
    this.perSecond.length = 0;
    this.#first = 0;
    this.firstByteAt = 0;
    this.lastByteAt = 0;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
