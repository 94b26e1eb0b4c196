// The connection load generator of `npm run bench -- replication`, run as a
// process of its own (`node test/bench/conn-load.ts '<json config>'`) so that
// the store and its clients never share an event loop. It connects the way
// the appliance does (StoreConnection.connect: TCP, TLS 1.3 with the
// appliance certificate, ALPN holdfast/1, HELLO/WELCOME), with no TLS session
// given, so every connection is a full handshake (no resumption).
//
// Protocol with the parent: one JSON line per event on stdout; commands, one
// per line, on stdin. "ready" carries what one probe handshake negotiated.
//   mode "rate": prints {"event":"ready"}, waits for "go", then opens and
//     closes connections with `concurrency` in flight for `seconds`; prints
//     {"event":"rate",…} and exits.
//   mode "hold": prints {"event":"ready"}, waits for "go", opens `count`
//     connections (`concurrency` at a time) and keeps them; prints
//     {"event":"opened",…}; on "ping" sends one PING on every connection and
//     prints {"event":"pinged",…}; on "close" closes them all, prints
//     {"event":"closed"} and exits.
import fs from 'node:fs';
import readline from 'node:readline';
import nodeTls from 'node:tls';

import { errorCode } from '../../appliance/errors/index.ts';
import { ALPN } from '../../appliance/protocol/index.ts';
import { type ClientTls, StoreConnection } from '../../appliance/replication/store-connection.ts';

export interface LoadConfig {
  mode: 'rate' | 'hold';
  port: number;
  ca: string;
  cert: string;
  key: string;
  /** rate: how long to keep connecting. */
  seconds?: number;
  /** Connections being opened at once. */
  concurrency: number;
  /** hold: how many to open. */
  count?: number;
  /** hold: how long one PING may take before it counts as unanswered. */
  pingTimeoutMs?: number;
}

function emit(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function latencies(ms: number[]): { p50_ms: number; p99_ms: number; max_ms: number } {
  const s = [...ms].sort((a, b) => a - b);
  const r = (n: number) => Math.round(n * 10) / 10;
  return { p50_ms: r(percentile(s, 0.5)), p99_ms: r(percentile(s, 0.99)), max_ms: r(s.at(-1) ?? 0) };
}

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function rssKib(): number {
  return Math.round(process.memoryUsage.rss() / 1024);
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as LoadConfig;
const tls: ClientTls = { ca: fs.readFileSync(cfg.ca), cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) };
const endpoint = { host: '127.0.0.1', port: cfg.port };

const lines = readline.createInterface({ input: process.stdin });
const waiting = new Map<string, () => void>();
lines.on('line', (l) => {
  const w = waiting.get(l.trim());
  waiting.delete(l.trim());
  w?.();
});
const command = (name: string) => new Promise<void>((resolve) => waiting.set(name, resolve));

function countError(errors: Record<string, number>, err: unknown): void {
  const code = errorCode(err) ?? 'error';
  errors[code] = (errors[code] ?? 0) + 1;
}

async function rate(): Promise<void> {
  const seconds = cfg.seconds ?? 10;
  const errors: Record<string, number> = {};
  const times: number[] = [];
  let ok = 0;
  let failed = 0;
  const cpu0 = cpuSeconds();
  const started = performance.now();
  const end = started + seconds * 1000;
  const worker = async () => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        const c = await StoreConnection.connect(endpoint, tls);
        times.push(performance.now() - t0);
        ok++;
        c.close();
      } catch (err) {
        failed++;
        countError(errors, err);
      }
    }
  };
  await Promise.all(Array.from({ length: cfg.concurrency }, worker));
  const elapsed = (performance.now() - started) / 1000;
  emit({ event: 'rate', ok, failed, errors, seconds: elapsed, per_second: ok / elapsed, cpu_seconds: cpuSeconds() - cpu0, ...latencies(times) });
}

async function hold(): Promise<void> {
  const count = cfg.count ?? 1000;
  const conns: StoreConnection[] = [];
  const errors: Record<string, number> = {};
  const times: number[] = [];
  let failed = 0;
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < count) {
      next++;
      const t0 = performance.now();
      try {
        conns.push(await StoreConnection.connect(endpoint, tls));
        times.push(performance.now() - t0);
      } catch (err) {
        failed++;
        countError(errors, err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency, count) }, worker));
  emit({ event: 'opened', ok: conns.length, failed, errors, seconds: (performance.now() - started) / 1000, rss_kib: rssKib(), ...latencies(times) });

  await command('ping');
  const timeout = cfg.pingTimeoutMs ?? 10_000;
  const rtts: number[] = [];
  let closedBefore = 0;
  let unanswered = 0;
  await Promise.all(conns.map(async (c) => {
    // ping() on a connection that is already closed would never settle
    if (c.closed) {
      closedBefore++;
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      const rtt = await Promise.race([
        c.ping(),
        new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error('no PONG')), timeout); }),
      ]);
      rtts.push(rtt);
    } catch {
      unanswered++;
    } finally {
      clearTimeout(timer);
    }
  }));
  emit({ event: 'pinged', answered: rtts.length, closed_before: closedBefore, unanswered, rss_kib: rssKib(), ...latencies(rtts) });

  await command('close');
  for (const c of conns) c.close();
  emit({ event: 'closed' });
}

/**
 * What one handshake negotiates, with the options StoreConnection.connect
 * uses (it does not expose its socket): protocol, cipher, key exchange group,
 * and whether the session was resumed (never: no session is passed).
 */
function probeTls(): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const s = nodeTls.connect({ ...endpoint, ...tls, minVersion: 'TLSv1.3', ALPNProtocols: [ALPN] }, () => {
      const info = { protocol: s.getProtocol(), cipher: s.getCipher().name, group: (s.getEphemeralKeyInfo() as { name?: string } | null)?.name ?? null, resumed: s.isSessionReused(), alpn: s.alpnProtocol };
      s.destroy();
      resolve(info);
    });
    s.on('error', (err) => resolve({ error: err.message }));
  });
}

emit({ event: 'ready', pid: process.pid, tls: await probeTls() });
await command('go');
if (cfg.mode === 'rate') await rate();
else await hold();
lines.close();
