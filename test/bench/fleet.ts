// `npm run bench -- fleet`: the fleet service under a fleet's heartbeats
// (issue 6, "done when"). The real service (`channel init`, `channel
// publish`, `channel serve`) runs as its own process; this process is the
// fleet: it enrolls every box through `POST /v1/enroll` (its own key and
// CSR, a one-time token from the vendor API), then each box heartbeats at
// the production interval (300 s, ±20% jitter) divided by a compression
// factor, over a new TLS connection with its own client certificate every
// time (a box heartbeating every 5 minutes finds its connection closed),
// acknowledges the commands an answer carries on that connection and, at its
// first heartbeat, uploads its escrow. Measured: latency of every heartbeat
// (request start, TLS handshake included, to the full answer), rate
// achieved, errors, the service's RSS and CPU every second, the database's
// size, and the generator's own CPU (it shares the two cores with the
// service). A last interval runs with the vendor's fleet page polling.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import tls, { type PeerCertificate, type TLSSocket } from 'node:tls';

import { makeCertificateRequest } from '../../appliance/pki/index.ts';
import { channelFiles } from '../../update-channel/server/channel-files.ts';
import { lightRelease } from '../helpers/fleet.ts';
import { emit, heading, mib, note, passMark, round, say, table } from './report.ts';
import { BenchError, capture, removeTree, run } from './run.ts';

const CHANNEL_CLI = path.resolve(import.meta.dirname, '..', '..', 'update-channel', 'cli', 'channel.ts');

/** The agent's heartbeat interval in production (FleetService's default) and its jitter. */
const PRODUCTION_SECONDS = 300;
const JITTER = 0.2;
/** What the simulated boxes run, and the release in its first rollout stage (10% of answers offer it). */
const BOX_VERSION = '1.4.2';
const RELEASE_VERSION = '1.5.0';
const RELEASE_PERCENT = 10;
/** The sealed configuration each box escrows at its first heartbeat (random bytes: sealed data does not compress). */
const ESCROW_BYTES = 4096;
/** The fleet page asks for GET /v1/fleet/boxes this often (update-channel/server/public/fleet.js). */
const FLEET_PAGE_MS = 5000;
/** A request not answered in this time is an error. */
const TIMEOUT_MS = 30_000;

/** Targets (issue 6, "done when"). */
const P95_TARGET_MS = 100;
/**
 * "Bounded": the service's mean RSS over the last interval no more than this share above its mean
 * over the 2nd (means of the 1 s samples: a single sample lands anywhere on V8's GC sawtooth,
 * which spans 20–40 MiB here).
 */
const RSS_GROWTH_LIMIT = 0.1;

function envNumber(name: string, fallback: number, ok: (n: number) => boolean): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!ok(n)) throw new BenchError(`${name}=${JSON.stringify(v)} is not valid`);
  return n;
}

export interface FleetConfig {
  boxes: number;
  compress: number;
  intervals: number;
  commandPercent: number;
  enrollConcurrency: number;
  /** 'full': every heartbeat a full TLS handshake; 'resume': a box offers the session of its last full handshake (see beat). */
  tls: 'full' | 'resume';
  /**
   * resume: how long the service's session tickets are good for (uncompressed): Node's default
   * sessionTimeout, 300 s (the service sets none). A resumed connection gets no new ticket, so a
   * box offers the ticket of its last full handshake until it is too old.
   */
  ticketSeconds: number;
}

function tlsMode(v: string | undefined): 'full' | 'resume' {
  if (v === undefined || v === '' || v === 'full') return 'full';
  if (v === 'resume') return 'resume';
  throw new BenchError(`HOLDFAST_BENCH_FLEET_TLS=${JSON.stringify(v)}: use full or resume`);
}

export function fleetConfig(): FleetConfig {
  return {
    boxes: envNumber('HOLDFAST_BENCH_FLEET_BOXES', 10_000, (n) => Number.isInteger(n) && n >= 10),
    compress: envNumber('HOLDFAST_BENCH_FLEET_COMPRESS', 5, (n) => n >= 1 && n <= 300),
    intervals: envNumber('HOLDFAST_BENCH_FLEET_INTERVALS', 6, (n) => Number.isInteger(n) && n >= 3),
    commandPercent: envNumber('HOLDFAST_BENCH_FLEET_COMMAND_PERCENT', 3, (n) => n >= 0 && n <= 100),
    enrollConcurrency: envNumber('HOLDFAST_BENCH_FLEET_ENROLL_CONCURRENCY', 16, (n) => Number.isInteger(n) && n >= 1),
    tls: tlsMode(process.env.HOLDFAST_BENCH_FLEET_TLS),
    ticketSeconds: envNumber('HOLDFAST_BENCH_FLEET_TICKET_SECONDS', 300, (n) => n > 0),
  };
}

export interface FleetSummary {
  boxes: number;
  compress: number;
  interval_seconds: number;
  heartbeats: number;
  scheduled_per_second: number;
  achieved_per_second: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  max_ms: number;
  errors: number;
  enroll_per_second: number;
  rss_kib: { start: number; intervals: number[]; means: number[]; peak: number; growth_2nd_to_last: number; mean_growth_2nd_to_last: number };
  db_bytes: number;
  pass: Record<string, boolean>;
}

function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function sortedOf(xs: number[]): Float64Array {
  return Float64Array.from(xs).sort();
}

function spread(xs: number[]): { p50: number; p95: number; p99: number; max: number } {
  const s = sortedOf(xs);
  return { p50: round(quantile(s, 0.5), 1), p95: round(quantile(s, 0.95), 1), p99: round(quantile(s, 0.99), 1), max: round(s.at(-1) ?? NaN, 1) };
}

// ---- the service's process: memory and CPU from /proc

let clockTicks = 0;
/** Clock ticks per second of /proc's CPU times (asked once). */
function clkTck(): number {
  clockTicks ||= Number(capture('getconf', ['CLK_TCK'])) || 100;
  return clockTicks;
}

interface ProcSample { at: number; rssKib: number; cpuSeconds: number }

function procSample(pid: number): ProcSample {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  // Fields after the command name (which may hold spaces): utime is the 14th field, stime the 15th.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { at: performance.now(), rssKib: rss, cpuSeconds: (Number(f[11]) + Number(f[12])) / clkTck() };
}

/** CPU seconds of the whole machine (/proc/stat, all cores): busy, and stolen by the hypervisor. */
function machineCpu(): { busy: number; steal: number } {
  // user nice system idle iowait irq softirq steal …
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { busy: (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) / clkTck(), steal: (f[7] ?? 0) / clkTck() };
}

function ownCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

// ---- the service

interface Service {
  child: ChildProcess;
  pid: number;
  port: number;
  dir: string;
  ca: string;
  vendorToken: string;
  /** Lines the service logged at level error or above. */
  errors: () => string[];
  stop(): Promise<void>;
}

async function startService(dir: string, heartbeatSeconds: number): Promise<Service> {
  const child = spawn(process.execPath, [CHANNEL_CLI, 'serve', '--dir', dir, '--listen', '127.0.0.1:0', '--heartbeat-seconds', String(heartbeatSeconds)],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = fs.createWriteStream(path.join(path.dirname(dir), 'channel.log'));
  const errors: string[] = [];
  let buf = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new BenchError('the fleet service did not start within 30 s')), 30_000);
    child.on('exit', (code, signal) => reject(new BenchError(`the fleet service exited (${signal ?? code}) before it was ready; see ${path.dirname(dir)}/channel.log`)));
    child.stderr!.on('data', (d: Buffer) => log.write(d));
    child.stdout!.on('data', (d: Buffer) => {
      log.write(d);
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let rec: { level?: number; msg?: string; port?: number } = {};
        try {
          rec = JSON.parse(line) as typeof rec;
        } catch {
          continue;
        }
        if ((rec.level ?? 0) >= 50) errors.push(line);
        if (rec.msg === 'channel ready' && typeof rec.port === 'number') {
          clearTimeout(timer);
          resolve(rec.port);
        }
      }
    });
  });
  const files = channelFiles(dir);
  return {
    child, pid: child.pid!, port, dir,
    ca: fs.readFileSync(files.caCert, 'utf8'),
    vendorToken: fs.readFileSync(files.vendorToken, 'utf8').trim(),
    errors: () => errors,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      process.kill(child.pid!, 'SIGTERM');
      const t = setTimeout(() => process.kill(child.pid!, 'SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
      await new Promise((r) => log.end(r));
    },
  };
}

// ---- HTTPS, as lean as a load generator on the server's two cores can be

interface Answer {
  status: number;
  /** The answer ('' when discarded) and its length. */
  body: string;
  bytes: number;
  /** performance.now() at: request start, TLS handshake done (null: not timed), answer complete. */
  start: number;
  secure: number | null;
  end: number;
  /** Sent on a kept-alive connection; over a resumed TLS session. */
  reused: boolean;
  resumed: boolean;
}

/** The agent's own check (fleet-client.ts): the server's certificate is a fleet certificate. */
function fleetIdentity(host: string, cert: PeerCertificate): Error | undefined {
  const e = tls.checkServerIdentity(host, cert);
  if (e) return e;
  const ou = cert.subject?.OU;
  return (Array.isArray(ou) ? ou : [ou]).includes('fleet') ? undefined : new Error(`not a fleet certificate (OU=${String(ou)})`);
}

function send(o: {
  port: number; method: string; path: string; body?: string | Buffer; agent: https.Agent | false; tls?: https.RequestOptions; headers?: Record<string, string>;
  /** The request opens a new connection: note when its TLS handshake is done (and whether it resumed a session). */
  timeHandshake?: boolean;
  /** A TLS session to offer, and where to keep the one the service sends. */
  session?: Buffer | null;
  onSession?: (s: Buffer) => void;
  /** Count the answer's bytes, keep none (a 7 MiB fleet list would cost the generator, not the service). */
  discard?: boolean;
}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let secure: number | null = null;
    let resumed = false;
    const body = o.body === undefined ? undefined : Buffer.from(o.body);
    const type = typeof o.body === 'string' ? 'application/json' : 'application/octet-stream';
    const req = https.request({
      host: '127.0.0.1', port: o.port, method: o.method, path: o.path, agent: o.agent, ...o.tls, ...(o.session ? { session: o.session } : {}),
      headers: { ...o.headers, ...(body ? { 'content-type': type, 'content-length': String(body.length) } : {}) },
    }, (res) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      res.on('data', (c: Buffer) => { bytes += c.length; if (!o.discard) chunks.push(c); });
      res.on('end', () => resolve({
        status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), bytes, start, secure, end: performance.now(), reused: req.reusedSocket, resumed,
      }));
      res.on('error', reject);
    });
    // 'socket' comes a tick after the connection began: its handshake (several round trips) is not done yet.
    if (o.timeHandshake) {
      req.once('socket', (s) => {
        const t = s as TLSSocket;
        t.once('secureConnect', () => { secure = performance.now(); resumed = t.isSessionReused(); });
        if (o.onSession) t.on('session', o.onSession);
      });
    }
    req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${TIMEOUT_MS / 1000} s`)));
    req.on('error', (err) => reject(Object.assign(err, { reusedSocket: req.reusedSocket })));
    req.end(body);
  });
}

/** The vendor's API (bearer token), over one keep-alive agent. */
function vendorApi(svc: Service) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 8, ca: svc.ca, checkServerIdentity: fleetIdentity });
  const call = async <T>(method: string, p: string, body?: unknown): Promise<T> => {
    const o = { port: svc.port, method, path: p, agent, headers: { authorization: `Bearer ${svc.vendorToken}` }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) };
    // A kept-alive connection the service closed (30 s idle) just as it was reused: the request
    // never reached it, so it is sent again on a new one (Node's documented reusedSocket retry).
    const a = await send(o).catch((err: Error & { reusedSocket?: boolean; code?: string }) => {
      if (err.reusedSocket && (err.code === 'ECONNRESET' || err.message === 'socket hang up')) return send(o);
      throw err;
    });
    if (a.status !== 200) throw new BenchError(`vendor API ${method} ${p}: HTTP ${a.status} ${a.body.slice(0, 300)}`);
    return JSON.parse(a.body) as T;
  };
  return { agent, call, close: () => agent.destroy() };
}

/** Runs fn over items with at most `n` at once. */
async function pool<T>(items: readonly T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  }));
}

// ---- the boxes

interface Box {
  keyPem: string;
  csrPem: string;
  token: string;
  name: string;
  certPem: string;
  /** Heartbeat body parts that stay the same between heartbeats. */
  sources: string[];
  targets: string[];
  warnings: string[];
  running: boolean;
  repositoryBytes: number;
  /** SHA-256 of the escrow the box uploaded (at its first heartbeat, as the agent does), or null. */
  escrowSha256: string | null;
  /** HOLDFAST_BENCH_FLEET_TLS=resume: the TLS session of the last heartbeat, and when (performance.now()) it began. */
  session: Buffer | null;
  sessionAt: number;
}

/** Keys and CSRs made by makeCertificateRequest, kept in the bench directory and reused (only the enrollment is measured). */
async function boxKeys(work: string, count: number): Promise<{ keys: { keyPem: string; csrPem: string }[]; made: number; perSecond: number }> {
  const file = path.join(work, 'fleet-box-keys.jsonl');
  const keys: { keyPem: string; csrPem: string }[] = fs.existsSync(file)
    ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { keyPem: string; csrPem: string })
    : [];
  const missing = Math.max(0, count - keys.length);
  if (missing === 0) return { keys: keys.slice(0, count), made: 0, perSecond: NaN };
  note(`fleet: making ${missing} keys and certificate requests (ECDSA P-256; kept in ${file} for later runs)`);
  const t0 = performance.now();
  const made: { keyPem: string; csrPem: string }[] = [];
  await pool(Array.from({ length: missing }), 8, async () => { made.push(await makeCertificateRequest('box')); });
  const seconds = (performance.now() - t0) / 1000;
  fs.appendFileSync(file, made.map((k) => `${JSON.stringify(k)}\n`).join(''), { mode: 0o600 });
  return { keys: [...keys, ...made].slice(0, count), made: missing, perSecond: missing / seconds };
}

const SOURCE_NAMES = ['fileserver', 'sql-dumps', 'mail', 'accounting', 'home-dirs'];
const TARGET_NAMES = ['offsite-a', 'offsite-b'];

/** The report part of a box that changes rarely, as Agent.report() builds it (varied per box). */
function boxProfile(i: number, rand: () => number): Pick<Box, 'sources' | 'targets' | 'warnings' | 'running' | 'repositoryBytes'> {
  const nSources = 2 + (i % 4);
  const day = Date.now() - 86_400_000;
  return {
    sources: SOURCE_NAMES.slice(0, nSources).map((name) => JSON.stringify({ name, lastBackup: new Date(day + Math.round(rand() * 86_400_000)).toISOString() })),
    targets: TARGET_NAMES.slice(0, 1 + (i % 2)).map((name, k) => JSON.stringify({
      name, lagSeconds: Math.round(rand() * 7200), lastError: k === 1 && rand() < 0.1 ? 'store offsite-b: connection refused (HF_STORE_UNREACHABLE)' : null,
    })),
    warnings: rand() < 0.05 ? ['target offsite-a: replication is 26 hours behind'] : [],
    running: rand() < 0.1,
    repositoryBytes: Math.round(2e11 + rand() * 4e12),
  };
}

/** A heartbeat body like Agent.report()'s. */
function report(b: Box): string {
  return `{"version":"${BOX_VERSION}","channel":"stable","updateWaiting":null,` +
    `"health":{"status":"${b.warnings.length ? 'warning' : 'ok'}","warnings":${JSON.stringify(b.warnings)}},` +
    `"jobs":{"running":${b.running ? '[{"kind":"backup","subject":"fileserver"}]' : '[]'},"lastFailed":null},` +
    `"storage":{"repositoryBytes":${b.repositoryBytes},"snapshots":${200 + (b.repositoryBytes % 300)},"diskFreeBytes":${8e12 - b.repositoryBytes}},` +
    `"sources":[${b.sources.join(',')}],"targets":[${b.targets.join(',')}]}`;
}

/** A small deterministic random source (the box profiles repeat from run to run). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** A min-heap of boxes by the time of their next heartbeat. */
class DueQueue {
  readonly #at: number[] = [];
  readonly #box: number[] = [];

  peek(): number { return this.#at[0] ?? Infinity; }

  push(at: number, box: number): void {
    const a = this.#at, b = this.#box;
    let i = a.length;
    a.push(at); b.push(box);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= at) break;
      a[i] = a[p]!; b[i] = b[p]!;
      i = p;
    }
    a[i] = at; b[i] = box;
  }

  pop(): { at: number; box: number } {
    const a = this.#at, b = this.#box;
    const top = { at: a[0]!, box: b[0]! };
    const lastAt = a.pop()!, lastBox = b.pop()!;
    if (a.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i, mAt = lastAt;
        if (l < a.length && a[l]! < mAt) { m = l; mAt = a[l]!; }
        if (r < a.length && a[r]! < mAt) { m = r; }
        if (m === i) break;
        a[i] = a[m]!; b[i] = b[m]!;
        i = m;
      }
      a[i] = lastAt; b[i] = lastBox;
    }
    return top;
  }
}

interface Beat {
  /** performance.now() when due and when begun. */
  due: number;
  start: number;
  /** Whole heartbeat: request start (TCP + TLS handshake) to the complete answer. */
  ms: number;
  /** Of which: TCP connect and TLS handshake; the request on the established connection to the complete answer. */
  handshakeMs: number;
  answerMs: number;
  commands: number;
}

export async function benchFleet(work: string): Promise<FleetSummary> {
  const cfg = fleetConfig();
  const intervalSeconds = PRODUCTION_SECONDS / cfg.compress;
  const intervalMs = intervalSeconds * 1000;
  heading(`fleet: ${cfg.boxes} boxes enrolling, then heartbeating every ${round(intervalSeconds, 1)} s ±${JITTER * 100}% (${PRODUCTION_SECONDS} s compressed ${cfg.compress}×) for ${cfg.intervals} intervals, ${cfg.tls === 'full' ? 'a full TLS handshake each' : 'TLS sessions resumed as the agent would'}`);
  const base = path.join(work, 'fleet');
  removeTree(base);
  fs.mkdirSync(base, { recursive: true });
  const dir = path.join(base, 'channel');
  const offline = path.join(base, 'offline-keys');
  let svc: Service | null = null;
  try {
    // ---- the channel: init, a release in its first stage, serve
    run({ file: process.execPath, args: [CHANNEL_CLI, 'init', '--dir', dir, '--offline-keys', offline] });
    const bundle = await lightRelease(base, RELEASE_VERSION);
    run({ file: process.execPath, args: [CHANNEL_CLI, 'publish', '--dir', dir, '--offline-keys', offline, '--channel', 'stable', '--version', RELEASE_VERSION, '--percent', String(RELEASE_PERCENT), bundle] });
    const { keys, made, perSecond: keysPerSecond } = await boxKeys(work, cfg.boxes);
    if (made > 0) say(`keys: ${made} made (${round(keysPerSecond, 0)}/s, 8 at a time), ${cfg.boxes - made} reused`);
    else say(`keys: ${cfg.boxes} reused from ${path.join(work, 'fleet-box-keys.jsonl')}`);

    svc = await startService(dir, intervalSeconds);
    const service = svc;
    const samples: ProcSample[] = [procSample(svc.pid)];
    const sampler = setInterval(() => { try { samples.push(procSample(service.pid)); } catch { /* exited */ } }, 1000);
    const startRssKib = samples[0]!.rssKib;
    say(`service: pid ${svc.pid}, port ${svc.port}, RSS ${mib(startRssKib * 1024)} after start`);
    const vendor = vendorApi(svc);

    // ---- tokens (vendor API), then enrollment (one new connection per box, no client certificate)
    let t0 = performance.now();
    const tokens: string[] = new Array<string>(cfg.boxes);
    await pool(keys, 8, async (_k, i) => { tokens[i] = (await vendor.call<{ token: string }>('POST', '/v1/fleet/tokens', { hours: 24, note: `bench box ${i}` })).token; });
    const tokenSeconds = (performance.now() - t0) / 1000;
    say(`tokens: ${cfg.boxes} through POST /v1/fleet/tokens (8 in flight, keep-alive) in ${round(tokenSeconds, 1)} s (${round(cfg.boxes / tokenSeconds, 0)}/s)`);

    const rand = mulberry32(6);
    const boxes: Box[] = keys.map((k, i) => ({ ...k, token: tokens[i]!, name: '', certPem: '', escrowSha256: null, session: null, sessionAt: 0, ...boxProfile(i, rand) }));
    const enrollMs: number[] = [];
    const cpuEnroll = [ownCpuSeconds(), procSample(svc.pid).cpuSeconds];
    t0 = performance.now();
    await pool(boxes, cfg.enrollConcurrency, async (b, i) => {
      const a = await send({
        port: service.port, method: 'POST', path: '/v1/enroll', agent: false, tls: { ca: service.ca, checkServerIdentity: fleetIdentity },
        body: JSON.stringify({ token: b.token, csr: b.csrPem, hostname: `bench-box-${i}`, channel: 'stable' }),
      });
      if (a.status !== 200) throw new BenchError(`enrolling box ${i}: HTTP ${a.status} ${a.body.slice(0, 300)}`);
      const r = JSON.parse(a.body) as { name: string; certificate: string };
      b.name = r.name;
      b.certPem = r.certificate;
      enrollMs.push(a.end - a.start);
    });
    const enrollSeconds = (performance.now() - t0) / 1000;
    const enrollCpu = { generator: ownCpuSeconds() - cpuEnroll[0]!, service: procSample(svc.pid).cpuSeconds - cpuEnroll[1]! };
    const enrollLat = spread(enrollMs);
    const enrollPerSecond = cfg.boxes / enrollSeconds;
    say(`enrollment: ${cfg.boxes} boxes through POST /v1/enroll (${cfg.enrollConcurrency} in flight, a new TLS connection each) in ${round(enrollSeconds, 1)} s: ` +
      `${round(enrollPerSecond, 0)}/s, latency p50 ${enrollLat.p50} ms, p95 ${enrollLat.p95} ms, max ${enrollLat.max} ms; ` +
      `CPU per enrollment: service ${round((enrollCpu.service / cfg.boxes) * 1000, 2)} ms, generator ${round((enrollCpu.generator / cfg.boxes) * 1000, 2)} ms`);
    for (const b of boxes) b.token = ''; // used up
    emit({ bench: 'fleet', op: 'enroll', boxes: cfg.boxes, concurrency: cfg.enrollConcurrency, seconds: round(enrollSeconds, 2), per_second: round(enrollPerSecond, 1),
      p50_ms: enrollLat.p50, p95_ms: enrollLat.p95, p99_ms: enrollLat.p99, max_ms: enrollLat.max,
      service_cpu_ms_each: round((enrollCpu.service / cfg.boxes) * 1000, 3), generator_cpu_ms_each: round((enrollCpu.generator / cfg.boxes) * 1000, 3),
      tokens_per_second: round(cfg.boxes / tokenSeconds, 1), load1: round(os.loadavg()[0]!, 2) });

    // ---- commands for a few percent of the boxes, before the run and through it
    const perInterval = Math.round((cfg.boxes * cfg.commandPercent) / 100);
    const queued = new Map<number, { box: number; at: number }>();
    const queueCommand = async (box: number) => {
      const b = boxes[box]!;
      const c = box % 2 === 0 ? { kind: 'run-job', args: { job: 'backup', subject: 'fileserver' } } : { kind: 'set', args: { key: 'maintenance-window', value: 'Sat-Sun 01:00-05:00' } };
      const { id } = await vendor.call<{ id: number }>('POST', `/v1/fleet/boxes/${b.name}/commands`, c);
      queued.set(id, { box, at: performance.now() });
    };
    const pick = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * cfg.boxes));
    await pool(pick(perInterval), 4, (box) => queueCommand(box));
    const preRun = new Set(queued.keys());

    // ---- the heartbeats: `intervals` measured ones, then one more with the fleet page open
    const rssBefore = procSample(svc.pid).rssKib;
    await sleep(2000);
    const loadBefore = os.loadavg()[0]!;
    const beats: Beat[] = [];
    const escrowMs: number[] = [];
    const errors = new Map<string, number>();
    const fail = (what: string) => errors.set(what, (errors.get(what) ?? 0) + 1);
    let acks = 0, acksReused = 0, offered = 0, escrowAnswers = 0, inFlight = 0, maxInFlight = 0, resumedCount = 0, offeredSessions = 0;
    const delivered = new Set<number>();
    const queue = new DueQueue();
    const T0 = performance.now() + 200;
    const measuredEnd = T0 + cfg.intervals * intervalMs;
    const end = measuredEnd + intervalMs;
    for (let i = 0; i < boxes.length; i++) queue.push(T0 + rand() * intervalMs, i);
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    let loopMeasured = { p99: NaN, max: NaN };
    const cpu0 = { generator: ownCpuSeconds(), service: procSample(svc.pid).cpuSeconds, machine: machineCpu() };
    const boundaries: { generatorCpu: number; sample: ProcSample; machine: { busy: number; steal: number } }[] = [];
    const timers: NodeJS.Timeout[] = [];
    for (let k = 0; k <= cfg.intervals; k++) {
      timers.push(setTimeout(() => {
        boundaries[k] = { generatorCpu: ownCpuSeconds(), sample: procSample(service.pid), machine: machineCpu() };
        if (k === cfg.intervals - 1) loopMeasured = { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
      }, T0 + (k + 1) * intervalMs - performance.now()));
    }
    for (let k = 1; k <= cfg.intervals; k++) {
      for (const box of pick(perInterval)) {
        timers.push(setTimeout(() => void queueCommand(box).catch((err: unknown) => fail(`queueing a command: ${(err as Error).message}`)),
          T0 + (k + rand()) * intervalMs - performance.now()));
      }
    }
    // The last interval: the vendor's fleet page open, polling GET /v1/fleet/boxes.
    const pageMs: number[] = [];
    let pageBytes = 0;
    const pagePoll = (async () => {
      await sleep(measuredEnd - performance.now());
      while (performance.now() < end) {
        const p0 = performance.now();
        const a = await send({ port: service.port, method: 'GET', path: '/v1/fleet/boxes', agent: vendor.agent, headers: { authorization: `Bearer ${service.vendorToken}` }, discard: true });
        pageMs.push(performance.now() - p0);
        pageBytes = a.bytes;
        if (a.status !== 200) fail(`fleet page HTTP ${a.status}`);
        // (its boxes are counted after the run, not here: parsing it would stall the generator)
        await sleep(Math.max(0, p0 + FLEET_PAGE_MS - performance.now()));
      }
    })();

    const beat = async (box: number, due: number): Promise<void> => {
      const b = boxes[box]!;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      // A real box's connection (undici, 20 s keep-alive) has closed when its next heartbeat comes:
      // each heartbeat is a new TCP connection and a full TLS handshake (undici holds TLS sessions
      // through a WeakRef only: after 5 idle minutes a box may well have none to offer).
      // The generator does not verify the service's certificate here (the agent does; enrollment
      // and the vendor calls below do too): that costs the client ~1 ms of CPU per connection,
      // on the cores the service needs, and nothing on the service's side of the handshake.
      const agent = new https.Agent({ keepAlive: true, maxSockets: 1, maxCachedSessions: 0, rejectUnauthorized: false, cert: b.certPem, key: b.keyPem });
      let nextSeconds = intervalSeconds;
      // resume: a box keeps the session its last full handshake got (a resumed one gets no new
      // ticket) and offers it; the service takes it while the ticket is good, i.e. when that
      // handshake began less than ticketSeconds ago in uncompressed time.
      const started = performance.now();
      const offer = cfg.tls === 'resume' && b.session !== null && (started - b.sessionAt) * cfg.compress < cfg.ticketSeconds * 1000 ? b.session : null;
      try {
        const a = await send({
          port: service.port, method: 'POST', path: '/v1/heartbeat', agent, body: report(b), timeHandshake: true,
          ...(cfg.tls === 'resume' ? { session: offer, onSession: (x: Buffer) => { b.session = x; b.sessionAt = started; } } : {}),
        });
        if (a.resumed) resumedCount++;
        if (offer) offeredSessions++;
        if (a.status !== 200) {
          fail(`heartbeat HTTP ${a.status}: ${a.body.slice(0, 200)}`);
          return;
        }
        const answer = JSON.parse(a.body) as { commands: { id: number; kind: string }[]; update: unknown; heartbeatSeconds: number; escrow: { sha256: string } | null };
        const secure = a.secure ?? a.start;
        beats.push({ due, start: a.start, ms: a.end - a.start, handshakeMs: secure - a.start, answerMs: a.end - secure, commands: answer.commands.length });
        if (answer.update) offered++;
        if (b.escrowSha256 !== null) {
          if (answer.escrow?.sha256 === b.escrowSha256) escrowAnswers++;
          else fail('a heartbeat answer names another escrow than the box uploaded');
        }
        nextSeconds = answer.heartbeatSeconds;
        // Then, as Agent.heartbeat: the commands, each acknowledged, and the escrow when it changed.
        for (const c of answer.commands) {
          delivered.add(c.id);
          const r = await send({
            port: service.port, method: 'POST', path: `/v1/commands/${c.id}/result`, agent,
            body: JSON.stringify({ ok: true, result: c.kind === 'run-job' ? { job: 1000 + c.id } : { 'maintenance-window': 'Sat-Sun 01:00-05:00' } }),
          });
          if (r.status !== 200) fail(`command result HTTP ${r.status}: ${r.body.slice(0, 200)}`);
          else { acks++; if (r.reused) acksReused++; }
        }
        if (b.escrowSha256 === null) {
          const blob = randomBytes(ESCROW_BYTES);
          const r = await send({ port: service.port, method: 'PUT', path: '/v1/escrow', agent, body: blob });
          const sha256 = createHash('sha256').update(blob).digest('hex');
          if (r.status !== 200 || (JSON.parse(r.body) as { sha256?: string }).sha256 !== sha256) fail(`escrow upload HTTP ${r.status}: ${r.body.slice(0, 200)}`);
          else { b.escrowSha256 = sha256; escrowMs.push(r.end - r.start); }
        }
      } catch (err) {
        fail(`heartbeat: ${(err as Error).message}`);
      } finally {
        agent.destroy();
        inFlight--;
        // As Agent.run: the next heartbeat the fleet's interval ±20% after this one ended.
        queue.push(performance.now() + nextSeconds * 1000 * (1 - JITTER + 2 * JITTER * Math.random()), box);
      }
    };

    const pending = new Set<Promise<void>>();
    await new Promise<void>((resolve) => {
      const tick = () => {
        const now = performance.now();
        while (queue.peek() <= now && queue.peek() < end) {
          const { at, box } = queue.pop();
          const p = beat(box, at);
          pending.add(p);
          void p.finally(() => pending.delete(p));
        }
        if (now >= end) { resolve(); return; }
        setTimeout(tick, Math.max(1, Math.min(queue.peek(), end) - now));
      };
      setTimeout(tick, T0 - performance.now());
    });
    await Promise.all([...pending, pagePoll]);
    for (const t of timers) clearTimeout(t);
    loop.disable();
    clearInterval(sampler);
    const loadAfter = os.loadavg()[0]!;
    const measuredBoundary = boundaries[cfg.intervals - 1]!;
    const lastBoundary = boundaries[cfg.intervals] ?? { generatorCpu: ownCpuSeconds(), sample: procSample(svc.pid), machine: machineCpu() };

    // ---- the fleet page once more, alone (no heartbeats)
    const idlePageMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const p0 = performance.now();
      const a = await send({ port: svc.port, method: 'GET', path: '/v1/fleet/boxes', agent: vendor.agent, headers: { authorization: `Bearer ${svc.vendorToken}` } });
      idlePageMs.push(performance.now() - p0);
      if (a.status !== 200) fail(`fleet page HTTP ${a.status}`);
      else if (i === 0 && (JSON.parse(a.body) as { boxes: unknown[] }).boxes.length !== cfg.boxes) fail('the fleet page does not list every box');
    }
    vendor.close();

    const files = channelFiles(dir);
    const dbFiles = [files.database, `${files.database}-wal`, `${files.database}-shm`].map((f) => ({ f, bytes: fs.existsSync(f) ? fs.statSync(f).size : 0 }));
    const serverErrors = svc.errors();
    await svc.stop();
    const dbBytesAfterClose = fs.statSync(files.database).size + (fs.existsSync(`${files.database}-wal`) ? fs.statSync(`${files.database}-wal`).size : 0);

    // ---- what it measured
    const measured = beats.filter((x) => x.start < measuredEnd);
    const withPage = beats.filter((x) => x.start >= measuredEnd);
    const lat = spread(measured.map((x) => x.ms));
    const hs = spread(measured.map((x) => x.handshakeMs));
    const ans = spread(measured.map((x) => x.answerMs));
    const withCommands = measured.filter((x) => x.commands > 0);
    const lag = spread(measured.map((x) => x.start - x.due));
    const escrowLat = spread(escrowMs);
    const errorCount = [...errors.values()].reduce((a, b) => a + b, 0);
    const runSeconds = (cfg.intervals * intervalMs) / 1000;
    const scheduledPerSecond = cfg.boxes / intervalSeconds;
    const achievedPerSecond = measured.length / runSeconds;
    const serviceCpu = measuredBoundary.sample.cpuSeconds - cpu0.service;
    const generatorCpu = measuredBoundary.generatorCpu - cpu0.generator;
    // (/proc/stat and the processes' own counters tick separately: a few tenths of a second either way)
    const otherCpu = Math.max(0, measuredBoundary.machine.busy - cpu0.machine.busy - serviceCpu - generatorCpu);
    const stealCpu = measuredBoundary.machine.steal - cpu0.machine.steal;
    const rows: string[][] = [];
    const intervalRss: number[] = [];
    const meanRss: number[] = [];
    for (let k = 0; k <= cfg.intervals; k++) {
      const from = T0 + k * intervalMs, to = from + intervalMs;
      const inK = beats.filter((x) => x.start >= from && x.start < to);
      const s = spread(inK.map((x) => x.ms));
      const prev = k === 0 ? { generatorCpu: cpu0.generator, sample: { cpuSeconds: cpu0.service } } : boundaries[k - 1]!;
      const here = k === cfg.intervals ? lastBoundary : boundaries[k]!;
      const inside = samples.filter((x) => x.at >= from && x.at < to).map((x) => x.rssKib);
      const mean = inside.length ? inside.reduce((a, b) => a + b, 0) / inside.length : here.sample.rssKib;
      if (k < cfg.intervals) { intervalRss.push(here.sample.rssKib); meanRss.push(Math.round(mean)); }
      rows.push([k < cfg.intervals ? `${k + 1}` : `${k + 1}: fleet page open`, String(inK.length), String(round(inK.length / intervalSeconds, 1)), String(s.p50), String(s.p95), String(s.p99), String(s.max),
        `${Math.round(((here.sample.cpuSeconds - prev.sample.cpuSeconds) / intervalSeconds) * 100)}%`,
        `${Math.round(((here.generatorCpu - prev.generatorCpu) / intervalSeconds) * 100)}%`, mib(mean * 1024), mib(here.sample.rssKib * 1024)]);
    }
    const peakRssKib = Math.max(...samples.filter((x) => x.at < measuredEnd).map((x) => x.rssKib), ...intervalRss);
    const pagePeakRssKib = Math.max(...samples.map((x) => x.rssKib), lastBoundary.sample.rssKib);
    const growthKib = intervalRss.at(-1)! - intervalRss[1]!;
    const meanGrowthKib = meanRss.at(-1)! - meanRss[1]!;
    table(['interval', 'heartbeats', 'per s', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'service CPU', 'generator CPU', 'service RSS mean', 'at end'], rows);
    say('');
    const row = (what: string, xs: number[], count = '') => { const v = spread(xs); return [what, count, String(v.p50), String(v.p95), String(v.p99), String(v.max)]; };
    table([`intervals 1–${cfg.intervals}`, 'count', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms'], [
      row('heartbeat: request start to complete answer', measured.map((x) => x.ms), String(measured.length)),
      row('  of which TCP + TLS handshake', measured.map((x) => x.handshakeMs)),
      row('  of which request to answer (service side)', measured.map((x) => x.answerMs)),
      row('heartbeats whose answer carried commands', withCommands.map((x) => x.ms), String(withCommands.length)),
      row('escrow upload (first heartbeat, same connection)', escrowMs, String(escrowMs.length)),
      row('start after due (generator lag)', measured.map((x) => x.start - x.due)),
    ]);
    const deliveredPreRun = [...preRun].filter((id) => delivered.has(id)).length;
    say(`rate: ${round(achievedPerSecond, 1)} heartbeats/s achieved over ${round(runSeconds, 1)} s against ${round(scheduledPerSecond, 1)}/s scheduled ` +
      `(${cfg.boxes} boxes / ${round(intervalSeconds, 1)} s); at most ${maxInFlight} in flight; ${offered} answers offered ${RELEASE_VERSION} (its ${RELEASE_PERCENT}% stage), ` +
      `${escrowAnswers} named the box's escrow`);
    say(`commands: ${queued.size} queued (${preRun.size} before the run, ${queued.size - preRun.size} during it), ${delivered.size} delivered, ${acks} acknowledged ` +
      `(${acksReused} on the heartbeat's connection); all ${preRun.size} queued before the run delivered: ${deliveredPreRun === preRun.size ? 'yes' : `no, ${deliveredPreRun}`}`);
    say(`errors: ${errorCount}${errorCount ? ` (${[...errors].slice(0, 5).map(([k, v]) => `${v}× ${k}`).join('; ')})` : ''}; errors the service logged: ${serverErrors.length}`);
    say(`CPU over intervals 1–${cfg.intervals}: service ${round(serviceCpu, 1)} s (${Math.round((serviceCpu / runSeconds) * 100)}% of a core, ${round((serviceCpu / Math.max(1, measured.length)) * 1000, 2)} ms per heartbeat), ` +
      `generator ${round(generatorCpu, 1)} s (${Math.round((generatorCpu / runSeconds) * 100)}% of a core, ${round((generatorCpu / Math.max(1, measured.length)) * 1000, 2)} ms per heartbeat); ` +
      `other processes ${Math.round((otherCpu / runSeconds) * 100)}% of a core, stolen by the hypervisor ${Math.round((stealCpu / runSeconds) * 100)}%; ` +
      `generator event-loop delay p99 ${round(loopMeasured.p99, 1)} ms, max ${round(loopMeasured.max, 1)} ms; load average ${round(loadBefore, 2)} before, ${round(loadAfter, 2)} after`);
    if (cfg.tls === 'resume') say(`TLS: ${offeredSessions} heartbeats offered a session, ${resumedCount} of ${beats.length} resumed one (tickets good for ${cfg.ticketSeconds} s, uncompressed)`);
    const behind = lag.p95 > 20 || loopMeasured.p99 > 50;
    if (behind) {
      note(`fleet: the generator fell behind (heartbeats began ${lag.p95} ms late at p95, its event loop stalled up to ${round(loopMeasured.max, 0)} ms): ` +
        'the two cores, not the service alone, set these latencies; a lower HOLDFAST_BENCH_FLEET_COMPRESS measures the service');
    }
    say(`service RSS: ${mib(startRssKib * 1024)} at start, ${mib(rssBefore * 1024)} after enrollment, ${intervalRss.map((k) => mib(k * 1024)).join(', ')} at the end of intervals 1–${cfg.intervals}, ` +
      `peak ${mib(peakRssKib * 1024)}; from the 2nd interval to the last: ${growthKib >= 0 ? '+' : ''}${mib(growthKib * 1024)} (end), ${meanGrowthKib >= 0 ? '+' : ''}${mib(meanGrowthKib * 1024)} (mean, ` +
      `${Math.round((meanGrowthKib * 1024) / Math.max(1, measured.filter((x) => x.start >= T0 + 1.5 * intervalMs && x.start < T0 + (cfg.intervals - 0.5) * intervalMs).length))} bytes per heartbeat in between); ` +
      `with the fleet page open: peak ${mib(pagePeakRssKib * 1024)}`);
    say(`database: ${dbFiles.map((d) => `${path.basename(d.f)} ${mib(d.bytes)}`).join(', ')} while serving; ${mib(dbBytesAfterClose)} after the service stopped`);
    const page = spread(pageMs);
    const pageLat = spread(withPage.map((x) => x.ms));
    say(`for information, the fleet page open (GET /v1/fleet/boxes every ${FLEET_PAGE_MS / 1000} s, ${mib(pageBytes)} of JSON for ${cfg.boxes} boxes): ${pageMs.length} answers in ` +
      `${pageMs.map((m) => round(m, 0)).join(', ')} ms; heartbeats meanwhile p50 ${pageLat.p50} ms, p95 ${pageLat.p95} ms, p99 ${pageLat.p99} ms, max ${pageLat.max} ms; ` +
      `the page alone afterwards: ${idlePageMs.map((m) => round(m, 0)).join(', ')} ms`);

    const pass = {
      p95: measured.length > 0 && lat.p95 < P95_TARGET_MS,
      no_errors: errorCount === 0 && serverErrors.length === 0 && deliveredPreRun === preRun.size && acks === delivered.size,
      rss_bounded: meanGrowthKib <= meanRss[1]! * RSS_GROWTH_LIMIT,
    };
    say(`${passMark(pass.p95)} p95 ${lat.p95} ms (target < ${P95_TARGET_MS} ms)`);
    say(`${passMark(pass.no_errors)} ${errorCount} errors, every command delivered was acknowledged`);
    say(`${passMark(pass.rss_bounded)} service RSS ${meanGrowthKib >= 0 ? '+' : ''}${mib(meanGrowthKib * 1024)} from interval 2 to interval ${cfg.intervals}, means (bounded: at most +${RSS_GROWTH_LIMIT * 100}%)`);
    const summary: FleetSummary = {
      boxes: cfg.boxes, compress: cfg.compress, interval_seconds: round(intervalSeconds, 2), heartbeats: measured.length,
      scheduled_per_second: round(scheduledPerSecond, 1), achieved_per_second: round(achievedPerSecond, 1),
      p50_ms: lat.p50, p95_ms: lat.p95, p99_ms: lat.p99, max_ms: lat.max, errors: errorCount, enroll_per_second: round(enrollPerSecond, 1),
      rss_kib: { start: startRssKib, intervals: intervalRss, means: meanRss, peak: peakRssKib, growth_2nd_to_last: growthKib, mean_growth_2nd_to_last: meanGrowthKib },
      db_bytes: dbFiles.reduce((a, d) => a + d.bytes, 0), pass,
    };
    emit({
      bench: 'fleet', op: 'heartbeats', ...summary, intervals: cfg.intervals, command_percent: cfg.commandPercent, run_seconds: round(runSeconds, 1),
      handshake_ms: hs, answer_ms: ans, with_commands: { count: withCommands.length, ...spread(withCommands.map((x) => x.ms)) }, escrow_upload_ms: { count: escrowMs.length, ...escrowLat },
      generator_lag_ms: lag, max_in_flight: maxInFlight,
      commands: { queued: queued.size, queued_before: preRun.size, delivered: delivered.size, acknowledged: acks, on_same_connection: acksReused },
      offered_update: offered, escrow_in_answers: escrowAnswers, error_kinds: Object.fromEntries(errors), service_errors: serverErrors.length,
      service_cpu_seconds: round(serviceCpu, 2), generator_cpu_seconds: round(generatorCpu, 2), other_cpu_seconds: round(otherCpu, 2), steal_cpu_seconds: round(stealCpu, 2),
      generator_loop_delay_ms: { p99: round(loopMeasured.p99, 1), max: round(loopMeasured.max, 1) }, generator_behind: behind, tls: cfg.tls, ...(cfg.tls === 'resume' ? { ticket_seconds: cfg.ticketSeconds, sessions_offered: offeredSessions } : {}), resumed: resumedCount,
      rss_after_enroll_kib: rssBefore, db_files: Object.fromEntries(dbFiles.map((d) => [path.basename(d.f), d.bytes])), db_bytes_after_close: dbBytesAfterClose,
      fleet_page: { answers_ms: pageMs.map((m) => round(m, 1)), bytes: pageBytes, heartbeats: withPage.length, heartbeat_ms: pageLat, alone_ms: idlePageMs.map((m) => round(m, 1)), peak_rss_kib: pagePeakRssKib, ...page },
      load1_before: round(loadBefore, 2), load1_after: round(loadAfter, 2),
    });
    return summary;
  } finally {
    await svc?.stop();
    if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(base);
  }
}

