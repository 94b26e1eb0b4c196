// `npm run bench -- replication`: the offsite store on loopback. Unthrottled
// replication of a repository of more than 1 GB of incompressible data to a
// fresh `holdfast store serve` against `rsync -a` over ssh of the same
// repository directory; new mutually authenticated connections per second;
// 1,000 idle connections held, answering PING, with the store's memory.
import { type ChildProcess, spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Test } from 'tap';

import { startSshd } from '../helpers/sshd.ts';
import { fileDigest } from '../helpers/tree.ts';
import { type Pki, makePki, startStore } from '../helpers/store.ts';
import type { LoadConfig } from './conn-load.ts';
import { emit, heading, mib, note, passMark, ratio, round, say, secs, table } from './report.ts';
import { type Command, type RunResult, BenchError, GNU_TIME, capture, duBytes, removeTree, run, sync, teardownScope, warmPageCache } from './run.ts';
import { HOLDFAST_BIN } from './tools.ts';
import { V8_FLAGS } from '../../appliance/cli/runtime.mjs';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** At least 1.05 GiB of data, so that the repository is over 1 GB. */
const DATA_BYTES = Math.ceil(1.05 * GiB);
/** Bumped when the way the data is made changes: older copies are made again. */
const DATA_FORMAT = 1;
const TENANT = 'bench';
const PASSWORD = 'holdfast-bench-passphrase';
const LOAD_SCRIPT = path.join(import.meta.dirname, 'conn-load.ts');

/** Targets (docs: issue 4, "Done when"). */
const CONN_RATE_TARGET = 300;
const IDLE_CONNECTIONS = 1000;
const IDLE_RSS_LIMIT_MIB = 300;

export interface ReplicationSummary {
  bytes: number;
  holdfast_mbps: number;
  rsync_mbps: number;
  vs_rsync: number;
  conn_per_second: number;
  conn_failures: number;
  idle: { held: number; answered: number; rss_before_mib: number; rss_holding_mib: number; kib_per_connection: number };
  pass: Record<string, boolean>;
}

interface Timed extends RunResult {
  seconds: number;
  rssKib: number;
  /** User + system CPU seconds of the command and the children it waited for. */
  cpu: number;
  /** Minor page faults (GNU time %R). */
  minorFaults: number;
}

export function holdfast(args: string[], env: Record<string, string>): Command {
  return { file: process.execPath, args: [...V8_FLAGS, HOLDFAST_BIN, ...args], env: { ...process.env, ...env } };
}

/** Like run.ts timed(), with more: wall seconds, peak RSS, user + system seconds, minor page faults (GNU time). */
export function timedCpu(c: Command): Timed {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hf-bench-time-'));
  const out = path.join(dir, 'time');
  try {
    sync();
    const r = run({ ...c, file: GNU_TIME, args: ['-f', '%e %M %U %S %R', '-o', out, c.file, ...c.args] });
    const last = fs.readFileSync(out, 'utf8').trim().split('\n').pop() ?? '';
    const m = /^(\d+(?:\.\d+)?) (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+)$/.exec(last);
    if (!m) throw new BenchError(`cannot parse GNU time output ${JSON.stringify(last)} of ${c.file}`);
    return { ...r, seconds: Number(m[1]), rssKib: Number(m[2]), cpu: Number(m[3]) + Number(m[4]), minorFaults: Number(m[5]) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const CLK_TCK = Number(capture('getconf', ['CLK_TCK'])) || 100;

/** Fields of /proc/PID/stat after "pid (comm)": index 0 is field 3 (state). */
function procStat(pid: number): number[] {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
}

/** CPU seconds of a live process (utime + stime), plus those of its reaped children when asked. */
export function processCpu(pid: number, children = false): number {
  const f = procStat(pid); // utime is field 14, stime 15, cutime 16, cstime 17
  return (f[11]! + f[12]! + (children ? f[13]! + f[14]! : 0)) / CLK_TCK;
}

/** Minor page faults of a live process so far (field 10). */
function minorFaults(pid: number): number {
  return procStat(pid)[7]!;
}

/** VmHWM (peak RSS) of a process, KiB. */
export function peakRssKib(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** VmRSS of a process, KiB. */
function rssKib(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new BenchError(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** Server-side TCP connections in state ESTABLISHED on a local port, as the kernel lists them. */
function establishedOn(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  let n = 0;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 3 && f[1]!.endsWith(`:${hex}`) && f[3] === '01') n++;
    }
  }
  return n;
}

function middle(values: number[]): number {
  const v = [...values].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
}

// ---------------------------------------------------------------- the data

/**
 * Deterministic incompressible files of 4–64 MiB each (AES-256-CTR of a
 * zero stream, keyed by the SHA-256 of a per-file seed), at least 1.05 GiB in
 * all, made once in the work directory and reused.
 */
export function prepareData(work: string): { dir: string; files: number; bytes: number } {
  const dir = path.join(work, 'replication-data');
  const marker = path.join(work, 'replication-data.json');
  try {
    const m = JSON.parse(fs.readFileSync(marker, 'utf8')) as { format: number; files: number; bytes: number };
    if (m.format === DATA_FORMAT && fs.existsSync(dir)) return { dir, files: m.files, bytes: m.bytes };
  } catch { /* make it */ }
  note(`replication: writing ${mib(DATA_BYTES)} of pseudo-random files to ${dir}`);
  removeTree(marker);
  removeTree(dir);
  fs.mkdirSync(dir, { recursive: true });
  const zeros = Buffer.alloc(4 * MiB);
  let bytes = 0;
  let files = 0;
  while (bytes < DATA_BYTES) {
    const key = createHash('sha256').update(`holdfast-bench-replication-${files}`).digest();
    const size = 4 * MiB + (key.readUInt32BE(0) % (60 * MiB + 1));
    const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
    const fd = fs.openSync(path.join(dir, `random-${String(files).padStart(3, '0')}.bin`), 'w');
    try {
      for (let off = 0; off < size; off += zeros.length) fs.writeSync(fd, cipher.update(zeros.subarray(0, Math.min(zeros.length, size - off))));
    } finally {
      fs.closeSync(fd);
    }
    bytes += size;
    files++;
  }
  fs.writeFileSync(marker, `${JSON.stringify({ format: DATA_FORMAT, files, bytes })}\n`);
  return { dir, files, bytes };
}

/** Regular files under dir (relative path → size), skipping top-level directories matched by skip. */
function filesUnder(dir: string, skip: RegExp): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const rel = path.relative(dir, p);
      if (skip.test(rel)) continue;
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.set(rel, fs.statSync(p).size);
    }
  };
  walk(dir);
  return out;
}

/** The repository's files that replication moves: everything but locks, tmp and the appliance-local replication state. */
export const repoFiles = (repo: string) => filesUnder(repo, /^(locks|tmp|replication)(\/|$)/);

/** Names that are the SHA-256 of the file's bytes (packs, index files, snapshots). */
const CONTENT_ADDRESSED = /^(?:data\/[0-9a-f]{2}|index|snapshots)\/([0-9a-f]{64})$/;

/**
 * The store's tenant directory holds exactly the repository's files,
 * byte-identical: the same names and sizes, every content-addressed file
 * hashing to its name, the others (config, keys) hashing as the
 * repository's. Every byte is read. Throws BenchError otherwise.
 */
function verifyTenant(repo: string, want: Map<string, number>, tenantDir: string): void {
  const got = filesUnder(tenantDir, /^(partial|trash|tmp)(\/|$)/);
  const missing = [...want.keys()].filter((k) => !got.has(k));
  const extra = [...got.keys()].filter((k) => !want.has(k));
  if (missing.length || extra.length) {
    throw new BenchError(`the store's tenant directory differs from the repository: missing ${missing.slice(0, 5).join(', ') || 'none'}; extra ${extra.slice(0, 5).join(', ') || 'none'}`);
  }
  for (const [rel, size] of want) {
    if (got.get(rel) !== size) throw new BenchError(`${rel}: ${got.get(rel)} bytes at the store, ${size} in the repository`);
    const m = CONTENT_ADDRESSED.exec(rel);
    const expected = m ? m[1]! : fileDigest(path.join(repo, rel));
    const actual = fileDigest(path.join(tenantDir, rel));
    if (actual !== expected) throw new BenchError(`${rel}: the store's copy hashes to ${actual}, expected ${expected}`);
  }
}

/** rsync's copy holds every replicated file with its size (rsync checks its own transfer's checksums). */
function verifyCopy(want: Map<string, number>, dest: string): void {
  const got = filesUnder(dest, /^$/);
  for (const [rel, size] of want) {
    if (got.get(rel) !== size) throw new BenchError(`rsync's copy: ${rel} has ${got.get(rel) ?? 'no'} bytes, the repository ${size}`);
  }
}

// ---------------------------------------------------------------- load generator processes

/** One conn-load.ts process: its JSON lines, awaited by event name. */
class LoadProcess {
  readonly child: ChildProcess;
  readonly #events: Record<string, unknown>[] = [];
  #waiters: (() => void)[] = [];
  #exit: number | null | undefined = undefined;
  #stderr = '';

  constructor(cfg: LoadConfig) {
    this.child = spawn(process.execPath, [LOAD_SCRIPT, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'pipe'] });
    readline.createInterface({ input: this.child.stdout! }).on('line', (l) => {
      try {
        this.#events.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        this.#stderr += `${l}\n`;
      }
      this.#wake();
    });
    this.child.stderr!.on('data', (d: Buffer) => { this.#stderr = (this.#stderr + d.toString('utf8')).slice(-20_000); });
    this.child.on('exit', (code) => { this.#exit = code; this.#wake(); });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  async next(event: string, timeoutMs = 120_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#events.findIndex((e) => e.event === event);
      if (i >= 0) return this.#events.splice(i, 1)[0]!;
      if (this.#exit !== undefined) throw new BenchError(`the load generator exited (${this.#exit}) before "${event}": ${this.#stderr.trim().slice(-2000)}`);
      if (Date.now() > deadline) throw new BenchError(`the load generator sent no "${event}" within ${timeoutMs / 1000} s`);
      await Promise.race([new Promise<void>((resolve) => this.#waiters.push(resolve)), sleep(1000)]);
    }
  }

  send(command: string): void {
    this.child.stdin!.write(`${command}\n`);
  }

  async exited(): Promise<void> {
    while (this.#exit === undefined) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    if (this.#exit !== 0) throw new BenchError(`the load generator exited ${this.#exit}: ${this.#stderr.trim().slice(-2000)}`);
  }

  kill(): void {
    if (this.#exit === undefined && this.child.pid) process.kill(this.child.pid, 'SIGKILL');
  }
}

function startLoad(scope: { t: Test }, cfg: LoadConfig): LoadProcess {
  const p = new LoadProcess(cfg);
  scope.t.teardown(() => p.kill());
  return p;
}

// ---------------------------------------------------------------- the benchmark

function num(name: string, fallback: number): number {
  const v = Number(process.env[name] ?? fallback);
  return Number.isFinite(v) && v > 0 ? v : fallback;
}

function loadNote(): string {
  return `load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`;
}

export async function benchReplication(work: string): Promise<ReplicationSummary> {
  heading('replication: a 1 GB repository to a store on loopback, against rsync over ssh; connections');
  const data = prepareData(work);
  say(`data: ${data.dir}: ${data.files} pseudo-random files of 4-64 MiB, ${mib(data.bytes)}`);
  const dir = path.join(work, 'replication');
  removeTree(dir);
  fs.mkdirSync(dir, { recursive: true });
  const repo = path.join(dir, 'repo');
  const env = { HOLDFAST_PASSWORD: PASSWORD, HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  if (/\s/.test(dir)) throw new BenchError(`the work directory ${dir} holds white space, which rsync -e cannot take`);

  // 1. the repository
  run(holdfast(['--version'], env)); // fills Node's compile cache, as a production install has it
  run(holdfast(['init', '--repo', repo, '-q'], env));
  note('replication: holdfast backup of the data');
  warmPageCache(data.dir);
  const backup = timedCpu({ ...holdfast(['backup', '--repo', repo, '--json', data.dir], env), ok: [0, 3] });
  const repoDu = duBytes(repo);
  const want = repoFiles(repo);
  const bytes = [...want.values()].reduce((s, n) => s + n, 0);
  say(`repository: ${repo}: du -sb ${repoDu} bytes (${mib(repoDu)}); ${want.size} files to replicate, ${bytes} bytes (${mib(bytes)}); backup took ${secs(backup.seconds)}`);
  emit({ bench: 'replication', op: 'repository', data_files: data.files, data_bytes: data.bytes, du_bytes: repoDu, files: want.size, bytes, backup_seconds: backup.seconds });
  if (repoDu < 1e9) throw new BenchError(`the repository holds only ${repoDu} bytes (du -sb), less than 1 GB`);

  const scope = teardownScope();
  try {
    const pki: Pki = await makePki(path.join(dir, 'pki'), [TENANT], ['store']);
    const appliance = pki.cert(TENANT);
    const tlsFlags = ['--ca', pki.ca, '--cert', appliance.cert, '--key', appliance.key];

    // 2. unthrottled replication against rsync -a over ssh
    const sshd = await startSshd(scope.t);
    const sshCommand = `ssh -p ${sshd.port} -i ${sshd.identityFile} -o BatchMode=yes -o UserKnownHostsFile=${sshd.knownHostsFile} -o StrictHostKeyChecking=yes`;
    // One untimed login (ssh's defaults: no -c, no compression); its debug lines name the cipher.
    const probe = run({ file: 'bash', args: ['-c', `${sshCommand} -v ${sshd.user}@127.0.0.1 true 2>&1`] });
    const cipher = /kex: server->client cipher: (\S+)/.exec(probe.stdout)?.[1] ?? 'unknown';
    say(`rsync: ${capture('rsync', ['--version']).split('\n')[0]}; ${capture('ssh', ['-V'])}; negotiated cipher ${cipher}`);
    say(`store and rsync's copy both under ${dir} (the same disk); ${loadNote()}`);

    const rounds = Math.max(1, Number(process.env.HOLDFAST_BENCH_ROUNDS ?? 3));
    interface Round { seconds: number; cpu: number; serverCpu: number; rssKib: number; faults: number; serverFaults?: number; serverPeakKib?: number; syncSeconds?: number }
    const results: Record<'holdfast' | 'rsync', Round[]> = { holdfast: [], rsync: [] };
    let storePort = 0;
    for (let r = 1; r <= rounds; r++) {
      note(`replication: round ${r} of ${rounds} (${loadNote()})`);
      const order: ('holdfast' | 'rsync')[] = r % 2 === 1 ? ['holdfast', 'rsync'] : ['rsync', 'holdfast'];
      for (const tool of order) {
        warmPageCache(repo);
        if (tool === 'holdfast') {
          const storeDir = path.join(dir, `store-${r}`);
          removeTree(storeDir);
          const store = await startStore(scope.t, { dir: storeDir, pki, port: storePort, name: 'bench-store' });
          if (storePort === 0) {
            storePort = store.port;
            run(holdfast(['target', 'add', '--repo', repo, 'offsite', '--endpoint', store.endpoint, ...tlsFlags], env));
          }
          note(`replication: holdfast replicate (round ${r})`);
          const load1 = os.loadavg()[0]!;
          const cpu0 = processCpu(store.pid);
          const faults0 = minorFaults(store.pid);
          const t = timedCpu(holdfast(['--json', 'replicate', '--repo', repo, '--target', 'offsite'], env));
          const serverCpu = processCpu(store.pid) - cpu0;
          const serverFaults = minorFaults(store.pid) - faults0;
          const serverPeakKib = peakRssKib(store.pid);
          const out = JSON.parse(t.stdout.trimEnd().split('\n').pop() ?? '{}') as { targets?: { ok: boolean; result?: { sentFiles: number; bytes: number; sent: number } }[] };
          const res = out.targets?.[0];
          if (!res?.ok || res.result?.sentFiles !== want.size || res.result.sent !== bytes) {
            throw new BenchError(`holdfast replicate did not send the whole repository (${want.size} files, ${bytes} bytes): ${t.stdout.slice(-1000)}`);
          }
          await store.stop();
          verifyTenant(repo, want, path.join(storeDir, 'tenants', TENANT));
          if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(storeDir);
          results.holdfast.push({ seconds: t.seconds, cpu: t.cpu, serverCpu, rssKib: t.rssKib, faults: t.minorFaults, serverFaults, serverPeakKib });
          say(`round ${r}: holdfast replicate ${secs(t.seconds)} (${(bytes / t.seconds / 1e6).toFixed(0)} MB/s), client CPU ${t.cpu.toFixed(2)} s, ` +
            `store CPU ${serverCpu.toFixed(2)} s, minor page faults client ${t.minorFaults} / store ${serverFaults}, store peak RSS ${mib(serverPeakKib * 1024)}; ` +
            `the store's ${want.size} files verified byte-identical (SHA-256 of every file); load average before ${load1.toFixed(2)}`);
          emit({ bench: 'replication', tool: 'holdfast', op: 'replicate', round: r, seconds: t.seconds, mbps: round(bytes / t.seconds / 1e6, 1), rss_kib: t.rssKib,
            client_cpu_seconds: round(t.cpu, 2), server_cpu_seconds: round(serverCpu, 2), client_minor_faults: t.minorFaults, server_minor_faults: serverFaults,
            server_peak_rss_kib: serverPeakKib, verified_files: want.size, load1: round(load1, 2) });
        } else {
          const dest = path.join(dir, `rsync-${r}`);
          removeTree(dest);
          note(`replication: rsync -a over ssh (round ${r})`);
          const load1 = os.loadavg()[0]!;
          const cpu0 = processCpu(sshd.pid, true);
          const t = timedCpu({ file: 'rsync', args: ['-a', '-e', sshCommand, `${repo}/`, `${sshd.user}@127.0.0.1:${dest}/`] });
          // the session's processes (sshd, the rsync server) are reaped by the listener: their CPU lands in its cutime/cstime
          let serverCpu = processCpu(sshd.pid, true) - cpu0;
          for (let i = 0; i < 20; i++) {
            await sleep(100);
            const now = processCpu(sshd.pid, true) - cpu0;
            if (now === serverCpu && i >= 2) break;
            serverCpu = now;
          }
          const s0 = performance.now();
          sync();
          const syncSeconds = (performance.now() - s0) / 1000;
          verifyCopy(want, dest);
          if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dest);
          results.rsync.push({ seconds: t.seconds, cpu: t.cpu, serverCpu, rssKib: t.rssKib, faults: t.minorFaults, syncSeconds });
          say(`round ${r}: rsync -a over ssh ${secs(t.seconds)} (${(bytes / t.seconds / 1e6).toFixed(0)} MB/s), client CPU (rsync + ssh) ${t.cpu.toFixed(2)} s, ` +
            `server CPU (sshd + rsync) ${serverCpu.toFixed(2)} s, minor page faults client ${t.minorFaults}; its dirty pages then took ${secs(syncSeconds)} to sync; load average before ${load1.toFixed(2)}`);
          emit({ bench: 'replication', tool: 'rsync', op: 'copy', round: r, seconds: t.seconds, mbps: round(bytes / t.seconds / 1e6, 1), rss_kib: t.rssKib,
            client_cpu_seconds: round(t.cpu, 2), server_cpu_seconds: round(serverCpu, 2), client_minor_faults: t.minorFaults, sync_after_seconds: round(syncSeconds, 2), load1: round(load1, 2) });
        }
      }
    }
    await sshd.stop();

    const med = (tool: 'holdfast' | 'rsync', k: 'seconds' | 'cpu' | 'serverCpu' | 'rssKib' | 'faults') => middle(results[tool].map((x) => x[k]));
    const hf = med('holdfast', 'seconds');
    const rs = med('rsync', 'seconds');
    const vsRsync = round(rs / hf, 3);
    const hfMbps = round(bytes / hf / 1e6, 1);
    const rsMbps = round(bytes / rs / 1e6, 1);
    say('');
    say(`(medians of ${rounds} rounds; ${mib(bytes)} of repository files; CPU: user + system seconds)`);
    table(['tool', 'wall', 'MB/s', 'client CPU', 'server CPU', 'client minor faults', 'client peak RSS'], [
      ['holdfast replicate -> store serve', secs(hf), hfMbps.toFixed(0), `${med('holdfast', 'cpu').toFixed(2)} s`, `${med('holdfast', 'serverCpu').toFixed(2)} s`, String(med('holdfast', 'faults')), mib(med('holdfast', 'rssKib') * 1024)],
      [`rsync -a over ssh (${cipher})`, secs(rs), rsMbps.toFixed(0), `${med('rsync', 'cpu').toFixed(2)} s`, `${med('rsync', 'serverCpu').toFixed(2)} s`, String(med('rsync', 'faults')), mib(med('rsync', 'rssKib') * 1024)],
    ]);
    say(`(client: the command and its children, from GNU time; server: the store process, or sshd's session processes and the rsync they started, from /proc; ${bytes} bytes are ${Math.round(bytes / 4096)} pages of 4 KiB)`);
    say(`per round, seconds: holdfast ${results.holdfast.map((x) => x.seconds.toFixed(2)).join(', ')}; rsync ${results.rsync.map((x) => x.seconds.toFixed(2)).join(', ')}` +
      `; sync after rsync ${results.rsync.map((x) => (x.syncSeconds ?? 0).toFixed(2)).join(', ')} (holdfast's store fsyncs every file before acknowledging it; rsync leaves its writes in the page cache)`);

    // 3. new connections per second
    const connProcs = Math.round(num('HOLDFAST_BENCH_CONN_PROCS', 1));
    const inflight = Math.round(num('HOLDFAST_BENCH_CONN_INFLIGHT', 32));
    const connSeconds = num('HOLDFAST_BENCH_CONN_SECONDS', 10);
    heading(`replication: new connections (${connProcs} client process(es) x ${inflight} in flight, ${connSeconds} s)`);
    const connStore = await startStore(scope.t, { dir: path.join(dir, 'store-conn'), pki, name: 'bench-store' });
    const base = { port: connStore.port, ca: pki.ca, cert: appliance.cert, key: appliance.key };
    const raters = Array.from({ length: connProcs }, () => startLoad(scope, { ...base, mode: 'rate', seconds: connSeconds, concurrency: inflight }));
    const ready = await Promise.all(raters.map((p) => p.next('ready')));
    const tlsInfo = ready[0]!.tls as Record<string, unknown>;
    say(`one probe handshake: ${tlsInfo.protocol} ${tlsInfo.cipher}, key exchange ${tlsInfo.group}, ALPN ${tlsInfo.alpn}, session resumed: ${tlsInfo.resumed}`);
    const connLoad = os.loadavg()[0]!;
    say(`${loadNote()} (before)`);
    const storeCpu0 = processCpu(connStore.pid);
    const t0 = performance.now();
    for (const p of raters) p.send('go');
    const rates = await Promise.all(raters.map((p) => p.next('rate', (connSeconds + 60) * 1000)));
    const connWall = (performance.now() - t0) / 1000;
    const connStoreCpu = processCpu(connStore.pid) - storeCpu0;
    for (const p of raters) await p.exited();
    const accepted = rates.reduce((s, x) => s + (x.ok as number), 0);
    const failures = rates.reduce((s, x) => s + (x.failed as number), 0);
    const errors: Record<string, number> = {};
    for (const x of rates) for (const [k, v] of Object.entries(x.errors as Record<string, number>)) errors[k] = (errors[k] ?? 0) + v;
    const window = Math.max(...rates.map((x) => x.seconds as number));
    const perSecond = round(accepted / window, 1);
    const clientCpu = rates.reduce((s, x) => s + (x.cpu_seconds as number), 0);
    const storeRssAfterRate = rssKib(connStore.pid);
    await connStore.stop();
    table(['measure', 'value'], [
      ['connections completed (TLS 1.3 full handshake, mutual certificates, HELLO/WELCOME)', String(accepted)],
      ['failed', `${failures}${failures ? ` ${JSON.stringify(errors)}` : ''}`],
      ['measured over', secs(window)],
      ['accepted per second (counted by the clients)', perSecond.toFixed(1)],
      ['connect latency p50 / p99 (per process)', rates.map((x) => `${x.p50_ms} / ${x.p99_ms} ms`).join('; ')],
      ['store CPU (one Node thread)', `${connStoreCpu.toFixed(2)} s = ${(100 * connStoreCpu / connWall).toFixed(0)}% of a core, ${(1000 * connStoreCpu / Math.max(1, accepted)).toFixed(2)} ms per connection`],
      ['client CPU', `${clientCpu.toFixed(2)} s = ${(100 * clientCpu / connWall).toFixed(0)}% of a core, ${(1000 * clientCpu / Math.max(1, accepted)).toFixed(2)} ms per connection`],
      ['store RSS after', mib(storeRssAfterRate * 1024)],
    ]);
    say('(every connection is a fresh tls.connect with no session passed: no TLS session resumption; each is closed as soon as WELCOME arrived)');
    emit({ bench: 'replication', op: 'connection_rate', processes: connProcs, in_flight: inflight * connProcs, seconds: round(window, 2), accepted, failed: failures, errors,
      per_second: perSecond, store_cpu_seconds: round(connStoreCpu, 2), client_cpu_seconds: round(clientCpu, 2), store_rss_kib: storeRssAfterRate,
      latency: rates.map((x) => ({ p50_ms: x.p50_ms, p99_ms: x.p99_ms, max_ms: x.max_ms })), tls: tlsInfo, load1: round(connLoad, 2) });

    // 4. 1,000 idle connections
    const holdProcs = Math.round(num('HOLDFAST_BENCH_IDLE_PROCS', 2));
    const holdSeconds = num('HOLDFAST_BENCH_IDLE_SECONDS', 15);
    heading(`replication: ${IDLE_CONNECTIONS} idle connections from ${holdProcs} client processes, held ${holdSeconds} s`);
    const idleStore = await startStore(scope.t, { dir: path.join(dir, 'store-idle'), pki, name: 'bench-store' });
    await sleep(2000);
    const rssBefore = rssKib(idleStore.pid);
    const idleLoad = os.loadavg()[0]!;
    say(`${loadNote()} (before)`);
    const per = Math.ceil(IDLE_CONNECTIONS / holdProcs);
    const holders = Array.from({ length: holdProcs }, (_, i) => startLoad(scope, {
      port: idleStore.port, ca: pki.ca, cert: appliance.cert, key: appliance.key,
      mode: 'hold', count: Math.min(per, IDLE_CONNECTIONS - i * per), concurrency: 25,
    }));
    for (const p of holders) await p.next('ready');
    for (const p of holders) p.send('go');
    const opened = await Promise.all(holders.map((p) => p.next('opened')));
    const held = opened.reduce((s, x) => s + (x.ok as number), 0);
    const openFailed = opened.reduce((s, x) => s + (x.failed as number), 0);
    const openSeconds = Math.max(...opened.map((x) => x.seconds as number));
    const establishedAtStart = establishedOn(idleStore.port);
    let rssHolding = rssKib(idleStore.pid);
    const holdStart = performance.now();
    while (performance.now() - holdStart < holdSeconds * 1000) {
      await sleep(1000);
      rssHolding = Math.max(rssHolding, rssKib(idleStore.pid));
    }
    const establishedAtEnd = establishedOn(idleStore.port);
    const heldFor = (performance.now() - holdStart) / 1000;
    for (const p of holders) p.send('ping');
    const pinged = await Promise.all(holders.map((p) => p.next('pinged')));
    const answered = pinged.reduce((s, x) => s + (x.answered as number), 0);
    rssHolding = Math.max(rssHolding, rssKib(idleStore.pid));
    const clientRss = pinged.reduce((s, x) => s + (x.rss_kib as number), 0);
    for (const p of holders) p.send('close');
    for (const p of holders) await p.exited();
    await sleep(2000);
    const rssAfter = rssKib(idleStore.pid);
    await idleStore.stop();
    const perConn = (rssHolding - rssBefore) / Math.max(1, held);
    table(['measure', 'value'], [
      ['connections opened (TLS 1.3, mutual certificates, HELLO/WELCOME)', `${held} of ${IDLE_CONNECTIONS} in ${secs(openSeconds)} (${openFailed} failed)`],
      ['ESTABLISHED at the store port (/proc/net/tcp): after opening / after the hold', `${establishedAtStart} / ${establishedAtEnd}`],
      ['held idle', secs(heldFor)],
      ['answered a PING after the hold', `${answered} of ${held} (RTT p50 ${pinged.map((x) => x.p50_ms).join(', ')} ms, max ${Math.max(...pinged.map((x) => x.max_ms as number))} ms)`],
      ['store RSS before (idle process)', mib(rssBefore * 1024)],
      ['store RSS holding (max of 1 s samples)', mib(rssHolding * 1024)],
      ['per connection', `${perConn.toFixed(1)} KiB`],
      ['store RSS 2 s after they closed', mib(rssAfter * 1024)],
      ['clients RSS (all processes)', mib(clientRss * 1024)],
    ]);
    say(`(the store closes a connection after 90 s without a frame and clients PING after 20 s idle: a ${holdSeconds} s hold tests neither timeout)`);
    emit({ bench: 'replication', op: 'idle_connections', processes: holdProcs, requested: IDLE_CONNECTIONS, opened: held, open_failed: openFailed, open_seconds: round(openSeconds, 2),
      established_start: establishedAtStart, established_end: establishedAtEnd, held_seconds: round(heldFor, 1), answered,
      store_rss_before_kib: rssBefore, store_rss_holding_kib: rssHolding, kib_per_connection: round(perConn, 1), store_rss_after_close_kib: rssAfter, client_rss_kib: clientRss, load1: round(idleLoad, 2) });

    // targets
    const pass = {
      vs_rsync: vsRsync >= 1,
      conn_rate: perSecond >= CONN_RATE_TARGET,
      idle_held: held === IDLE_CONNECTIONS && establishedAtEnd >= IDLE_CONNECTIONS && answered === IDLE_CONNECTIONS,
      idle_memory: rssHolding < IDLE_RSS_LIMIT_MIB * 1024,
    };
    heading('replication: targets');
    table(['target', 'measured', 'goal', 'result'], [
      ['replication vs rsync (rsync s / holdfast s)', `${ratio(vsRsync)} (${hfMbps.toFixed(0)} vs ${rsMbps.toFixed(0)} MB/s)`, '>= 1', passMark(pass.vs_rsync)],
      ['new connections per second', perSecond.toFixed(1), `>= ${CONN_RATE_TARGET}`, passMark(pass.conn_rate)],
      ['idle connections held, answering PING', `${answered} of ${IDLE_CONNECTIONS}`, `${IDLE_CONNECTIONS}`, passMark(pass.idle_held)],
      ['store RSS holding them', `${mib(rssHolding * 1024)} (${perConn.toFixed(1)} KiB/conn)`, `< ${IDLE_RSS_LIMIT_MIB} MiB`, passMark(pass.idle_memory)],
    ]);
    const summary: ReplicationSummary = {
      bytes, holdfast_mbps: hfMbps, rsync_mbps: rsMbps, vs_rsync: vsRsync, conn_per_second: perSecond, conn_failures: failures,
      idle: { held, answered, rss_before_mib: round(rssBefore / 1024, 1), rss_holding_mib: round(rssHolding / 1024, 1), kib_per_connection: round(perConn, 1) },
      pass,
    };
    emit({ bench: 'replication', op: 'targets', ...summary });
    return summary;
  } finally {
    await scope.close();
    if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dir);
  }
}
