// The appliance as production runs it: `holdfast engine` and `holdfast
// console` as real processes on a temporary data directory, the console on a
// loopback port; and an HTTPS client that talks to the console as a browser
// does (session cookie, CSRF header), verifying the console's own certificate.
import { type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { Agent, request } from 'undici';

import { EngineClient } from '../../appliance/console/index.ts';
import { startCli } from './cli.ts';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Proc {
  child: ChildProcess;
  pid: number;
  output: () => string;
  exited: Promise<number | null>;
  alive: () => boolean;
}

function spawnService(t: Teardown, args: string[], env: Record<string, string | undefined>): Proc {
  const child = startCli(args, env);
  let output = '';
  const keep = (d: Buffer) => { output = (output + d.toString('utf8')).slice(-500_000); };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let alive = true;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { alive = false; resolve(code); }));
  t.teardown(async () => {
    if (alive && child.pid) process.kill(child.pid, 'SIGKILL');
    await exited;
  });
  return { child, pid: child.pid!, output: () => output, exited, alive: () => alive };
}

async function until<T>(what: string, fn: () => Promise<T | null>, proc: Proc, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v !== null) return v;
    if (!proc.alive()) throw new Error(`${what}: the process exited: ${proc.output().slice(-3000)}`);
    if (Date.now() > end) throw new Error(`${what}: not ready in ${ms} ms: ${proc.output().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Appliance {
  dataDir: string;
  socket: string;
  url: string;
  engine: Proc;
  console: Proc;
  /** The engine's API as the local admin (the CLI's token). */
  local: EngineClient;
  /** Starts the engine again (after killEngine), waiting until it answers. */
  startEngine(): Promise<void>;
  killEngine(): Promise<void>;
  /** The console's certificate (for an HTTPS client that verifies it). */
  cert: Buffer;
}

/** Starts the engine and the console on dataDir; everything is killed (by pid) at teardown. */
export async function startAppliance(t: Teardown, o: { dataDir: string; restoreRoots?: string[]; env?: Record<string, string | undefined> }): Promise<Appliance> {
  fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
  const socket = path.join(o.dataDir, 'engine.sock');
  const env = { HOLDFAST_CACHE_DIR: path.join(o.dataDir, 'cli-cache'), ...o.env };
  const engineArgs = ['engine', '--data-dir', o.dataDir, ...(o.restoreRoots ?? []).flatMap((r) => ['--restore-root', r])];
  const probe = new EngineClient(socket);
  t.teardown(() => probe.close());
  const app = {} as Appliance;
  app.dataDir = o.dataDir;
  app.socket = socket;
  app.startEngine = async () => {
    app.engine = spawnService(t, engineArgs, env);
    await until('engine', async () => ((await probe.call('GET', '/v1/status')) ? true : null), app.engine);
  };
  app.killEngine = async () => {
    if (app.engine.alive()) process.kill(app.engine.pid, 'SIGKILL');
    await app.engine.exited;
  };
  await app.startEngine();
  const token = fs.readFileSync(path.join(o.dataDir, 'local.token'), 'utf8').trim();
  app.local = new EngineClient(socket, `Local ${token}`);
  t.teardown(() => app.local.close());
  app.console = spawnService(t, ['console', '--data-dir', o.dataDir, '--listen', '127.0.0.1:0'], env);
  app.url = await until('console', async () => {
    const line = app.console.output().split('\n').find((l) => l.includes('"console ready"'));
    return line ? (JSON.parse(line) as { url: string }).url : null;
  }, app.console);
  app.cert = fs.readFileSync(path.join(o.dataDir, 'console', 'console.crt'));
  return app;
}

export interface Answer {
  status: number;
  json: any;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** A browser-like client of the console: one cookie jar, the session's CSRF token. */
export class ConsoleClient {
  readonly #url: string;
  readonly #agent: Agent;
  cookie: string | null = null;
  csrf: string | null = null;

  constructor(app: Pick<Appliance, 'url' | 'cert'>) {
    this.#url = app.url;
    // verifies the console's self-signed certificate (its SAN holds 127.0.0.1)
    this.#agent = new Agent({ connect: { ca: app.cert } });
  }

  async request(method: string, p: string, body?: unknown, o: { csrf?: boolean | string; origin?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
    const headers: Record<string, string> = { ...o.headers };
    if (this.cookie) headers.cookie = this.cookie;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const csrf = typeof o.csrf === 'string' ? o.csrf : o.csrf === false ? null : this.csrf;
    if (csrf && method !== 'GET') headers['x-csrf-token'] = csrf;
    if (o.origin) headers.origin = o.origin;
    const r = await request(`${this.#url}${p}`, {
      method: method as 'GET', headers, dispatcher: this.#agent, ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const buf = Buffer.from(await r.body.arrayBuffer());
    const setCookie = r.headers['set-cookie'];
    for (const c of Array.isArray(setCookie) ? setCookie : setCookie ? [setCookie] : []) {
      const [pair] = c.split(';');
      if (pair?.startsWith('hf_session=')) this.cookie = pair.endsWith('=') ? null : pair;
    }
    let json: unknown = null;
    if (String(r.headers['content-type'] ?? '').includes('json')) json = JSON.parse(buf.toString('utf8') || 'null');
    return { status: r.statusCode, json, headers: r.headers, body: buf };
  }

  async login(user: string, password: string): Promise<Answer> {
    const a = await this.request('POST', '/api/v1/login', { user, password });
    if (a.status === 200) this.csrf = (a.json as { csrf: string }).csrf;
    return a;
  }

  /** The session's connection pool (for a request of one's own, e.g. the events stream). */
  get dispatcher(): Agent {
    return this.#agent;
  }

  close(): Promise<void> {
    return this.#agent.close();
  }
}

/** Waits for a job to end; returns it. */
export async function waitJob(client: EngineClient, id: number, ms = 120_000): Promise<any> {
  const end = Date.now() + ms;
  for (;;) {
    const { job } = await client.call<{ job: { state: string } }>('GET', `/v1/jobs/${id}`);
    if (['done', 'failed', 'cancelled'].includes(job.state)) return job;
    if (Date.now() > end) throw new Error(`job ${id} still ${job.state} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
