// `npm run bench -- console`: the console's API under load, through the real
// console (HTTPS, session cookie) and engine processes. 50 clients, each a
// logged-in browser session with its own TLS connection and its live-events
// stream open, ask for the pages an admin clicks through, while the engine
// runs a first backup of the tree data (about 1.3 GB); the latency of every
// answer received while the backup ran is kept. Then pages of a directory
// of 100,000 entries in a snapshot: the first, one in the middle, the last.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { request } from 'undici';

import { ConsoleClient, startAppliance, waitJob } from '../helpers/appliance.ts';
import { prepareTree } from './data.ts';
import { emit, heading, note, passMark, round, say, table } from './report.ts';
import { BenchError, removeTree, teardownScope, warmPageCache } from './run.ts';

const CLIENTS = 50;
/** Each client's pause between answers and its next request: 100–300 ms (a person clicking is far slower). */
const THINK_MS: [number, number] = [100, 300];
const BIG_DIR_ENTRIES = 100_000;
const PAGE = 200;
const PAGE_REPEATS = 20;
const PASSWORD = 'holdfast bench password';

/** Targets (docs: issue 5, "Done when"). */
const P95_TARGET_MS = 50;
const PAGE_TARGET_MS = 100;

export interface ConsoleSummary {
  clients: number;
  requests: number;
  window_seconds: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  max_ms: number;
  errors: number;
  back_to_back: { requests: number; p50_ms: number; p95_ms: number } | null;
  page_ms: { first: number; middle: number; last: number; worst: number };
  pass: Record<string, boolean>;
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** work/console-bigdir/big: 100,000 empty files (made once; a marker says it is complete). */
function prepareBigDir(work: string): string {
  const root = path.join(work, 'console-bigdir');
  const marker = `${root}.done`;
  if (fs.existsSync(marker)) return root;
  note(`console: making a directory of ${BIG_DIR_ENTRIES} files in ${root} (first run only)`);
  removeTree(root);
  const big = path.join(root, 'big');
  fs.mkdirSync(big, { recursive: true });
  for (let i = 0; i < BIG_DIR_ENTRIES; i++) fs.closeSync(fs.openSync(path.join(big, `invoice-${String(i).padStart(6, '0')}.pdf`), 'w'));
  fs.writeFileSync(marker, `${BIG_DIR_ENTRIES}\n`);
  return root;
}

interface Sample { at: number; ms: number; ok: boolean; url: string }

/** One browser session: its own connection, its events stream, a request after each pause. */
async function client(c: ConsoleClient, urls: string[], until: () => boolean, think: [number, number] | null, out: Sample[], offset: number): Promise<void> {
  let i = offset;
  while (!until()) {
    const url = urls[i++ % urls.length]!;
    const t0 = performance.now();
    const a = await c.request('GET', url).catch(() => null);
    out.push({ at: t0, ms: performance.now() - t0, ok: a?.status === 200, url });
    if (think) await sleep(think[0] + Math.random() * (think[1] - think[0]));
  }
}

/** Opens /api/v1/events for a session and reads it until signal aborts; resolves with how many events came. */
async function eventStream(url: string, c: ConsoleClient, signal: AbortSignal): Promise<number> {
  let events = 0;
  try {
    const r = await request(`${url}/api/v1/events`, { headers: { cookie: c.cookie ?? '' }, dispatcher: c.dispatcher, signal });
    for await (const chunk of r.body) events += (String(chunk).match(/^event:/gm) ?? []).length;
  } catch {
    // aborted at the end
  }
  return events;
}

export async function benchConsole(work: string): Promise<ConsoleSummary> {
  heading(`console: ${CLIENTS} clients on the console API while a backup runs; pages of a ${BIG_DIR_ENTRIES}-entry directory`);
  const tree = prepareTree(work).root;
  const bigRoot = prepareBigDir(work);
  const dir = path.join(work, 'console');
  removeTree(dir);
  fs.mkdirSync(dir, { recursive: true });
  const scope = teardownScope();
  try {
    const app = await startAppliance(scope.t, { dataDir: path.join(dir, 'data') });
    const admin = new ConsoleClient(app);
    scope.t.teardown(() => admin.close());
    const setup = await admin.request('POST', '/api/v1/setup', { user: 'admin', password: PASSWORD });
    if (setup.status !== 200) throw new BenchError(`console setup failed: ${JSON.stringify(setup.json)}`);
    await admin.login('admin', PASSWORD);
    for (const [name, p] of [['bigdir', bigRoot], ['tree', tree]] as const) {
      const a = await admin.request('POST', '/api/v1/sources', { name, kind: 'local', paths: [p] });
      if (a.status !== 200) throw new BenchError(`adding source ${name}: ${JSON.stringify(a.json)}`);
    }
    const big = await admin.request('POST', '/api/v1/jobs', { kind: 'backup', subject: 'bigdir' });
    const bigJob = await waitJob(app.local, big.json.job.id, 600_000);
    if (bigJob.state !== 'done') throw new BenchError(`backup of the big directory: ${JSON.stringify(bigJob.error)}`);
    const snapshot = bigJob.result.snapshot as string;
    const bigPath = path.join(bigRoot, 'big');
    const pageUrl = (after?: string) => `/api/v1/snapshots/${snapshot}/entries?path=${encodeURIComponent(bigPath)}&limit=${PAGE}${after ? `&after=${encodeURIComponent(after)}` : ''}`;

    // ---- pages of the big directory (no backup running)
    const name = (i: number) => `invoice-${String(i).padStart(6, '0')}.pdf`;
    const positions = { first: undefined, middle: name(BIG_DIR_ENTRIES / 2), last: name(BIG_DIR_ENTRIES - PAGE - 1) } as Record<string, string | undefined>;
    const pageMs: Record<string, number> = {};
    const rows: string[][] = [];
    for (const [where, after] of Object.entries(positions)) {
      const times: number[] = [];
      for (let i = 0; i < PAGE_REPEATS; i++) {
        const t0 = performance.now();
        const a = await admin.request('GET', pageUrl(after));
        times.push(performance.now() - t0);
        if (a.status !== 200 || a.json.entries.length !== PAGE) throw new BenchError(`page ${where}: ${a.status} ${a.json?.entries?.length} entries`);
      }
      times.sort((x, y) => x - y);
      pageMs[where] = round(quantile(times, 0.5), 1);
      rows.push([where, `${round(times[0]!, 1)}`, `${pageMs[where]}`, `${round(times.at(-1)!, 1)}`]);
      emit({ bench: 'console', op: 'page', where, entries: BIG_DIR_ENTRIES, limit: PAGE, min_ms: round(times[0]!, 2), median_ms: round(quantile(times, 0.5), 2), max_ms: round(times.at(-1)!, 2) });
    }
    table([`page of ${PAGE} (of ${BIG_DIR_ENTRIES})`, 'min ms', 'median ms', 'max ms'], rows);
    const worstPage = Math.max(...Object.values(pageMs));

    // ---- 50 sessions, then a backup, then the load while it runs
    const clients: ConsoleClient[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const c = new ConsoleClient(app);
      scope.t.teardown(() => c.close());
      const a = await c.login('admin', PASSWORD);
      if (a.status !== 200) throw new BenchError(`login ${i}: ${JSON.stringify(a.json)}`);
      clients.push(c);
    }
    const urls = ['/api/v1/dashboard', '/api/v1/jobs', '/api/v1/snapshots', pageUrl(), '/api/v1/sources', '/api/v1/targets', '/api/v1/session'];
    const stopEvents = new AbortController();
    const streams = clients.map((c) => eventStream(app.url, c, stopEvents.signal));
    warmPageCache(tree, path.join(dir, 'data', 'repository'));
    const run = await admin.request('POST', '/api/v1/jobs', { kind: 'backup', subject: 'tree' });
    const jobId = run.json.job.id as number;
    let running = false;
    let ended = false;
    let runStart = 0;
    let runEnd = 0;
    const watch = (async () => {
      while (!ended) {
        const { job } = await app.local.call<{ job: { state: string } }>('GET', `/v1/jobs/${jobId}`);
        if (job.state === 'running' && !running) { running = true; runStart = performance.now(); }
        if (['done', 'failed', 'cancelled'].includes(job.state)) { ended = true; runEnd = performance.now(); if (job.state !== 'done') throw new BenchError(`the backup under load ${job.state}`); }
        await sleep(50);
      }
    })();
    while (!running && !ended) await sleep(20);
    const samples: Sample[] = [];
    // clients start staggered over the first pause, as sessions do
    await Promise.all(clients.map((c, i) => sleep((i * THINK_MS[1]) / CLIENTS).then(() => client(c, urls, () => ended, THINK_MS, samples, i))));
    await watch;
    const during = samples.filter((s) => s.at >= runStart && s.at + s.ms <= runEnd);
    const lat = during.map((s) => s.ms).sort((a, b) => a - b);
    const errors = during.filter((s) => !s.ok).length;
    const windowSeconds = (runEnd - runStart) / 1000;

    // ---- for information: the same clients without pauses, during a second backup
    await admin.request('POST', '/api/v1/jobs', { kind: 'backup', subject: 'bigdir' });
    const b2b: Sample[] = [];
    const stopAt = performance.now() + 5000;
    await Promise.all(clients.map((c, i) => client(c, urls, () => performance.now() > stopAt, null, b2b, i)));
    const b2bLat = b2b.map((s) => s.ms).sort((a, b) => a - b);
    stopEvents.abort();
    const events = (await Promise.all(streams)).reduce((a, b) => a + b, 0);

    const summary: ConsoleSummary = {
      clients: CLIENTS, requests: during.length, window_seconds: round(windowSeconds, 1),
      p50_ms: round(quantile(lat, 0.5), 1), p95_ms: round(quantile(lat, 0.95), 1), p99_ms: round(quantile(lat, 0.99), 1), max_ms: round(lat.at(-1) ?? NaN, 1),
      errors,
      back_to_back: b2bLat.length ? { requests: b2bLat.length, p50_ms: round(quantile(b2bLat, 0.5), 1), p95_ms: round(quantile(b2bLat, 0.95), 1) } : null,
      page_ms: { first: pageMs.first!, middle: pageMs.middle!, last: pageMs.last!, worst: worstPage },
      pass: { api_p95: lat.length > 0 && errors === 0 && quantile(lat, 0.95) < P95_TARGET_MS, page: worstPage < PAGE_TARGET_MS },
    };
    table(['while the backup ran', 'requests', 'seconds', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'errors'],
      [[`${CLIENTS} clients, ${THINK_MS[0]}–${THINK_MS[1]} ms pauses`, String(summary.requests), String(summary.window_seconds), String(summary.p50_ms), String(summary.p95_ms), String(summary.p99_ms), String(summary.max_ms), String(errors)]]);
    const byRoute = new Map<string, number[]>();
    for (const s of during) {
      const route = s.url.replace(/\?.*$/, '').replace(snapshot, ':id');
      byRoute.set(route, [...(byRoute.get(route) ?? []), s.ms]);
    }
    table(['route (while the backup ran)', 'requests', 'p50 ms', 'p95 ms', 'max ms'], [...byRoute].map(([route, ms]) => {
      ms.sort((a, b) => a - b);
      return [route, String(ms.length), String(round(quantile(ms, 0.5), 1)), String(round(quantile(ms, 0.95), 1)), String(round(ms.at(-1)!, 1))];
    }));
    if (summary.back_to_back) say(`for information, the same ${CLIENTS} clients without pauses (5 s, a backup running): ${summary.back_to_back.requests} requests, p50 ${summary.back_to_back.p50_ms} ms, p95 ${summary.back_to_back.p95_ms} ms`);
    say(`live events received by the ${CLIENTS} sessions: ${events}`);
    say(`${passMark(summary.pass.api_p95!)} p95 ${summary.p95_ms} ms (target < ${P95_TARGET_MS} ms, no errors)`);
    say(`${passMark(summary.pass.page!)} slowest page median ${worstPage} ms (target < ${PAGE_TARGET_MS} ms)`);
    if (windowSeconds < 5) note(`console: the backup ran only ${round(windowSeconds, 1)} s under load`);
    emit({ bench: 'console', op: 'api_under_backup', ...summary, live_events: events });
    return summary;
  } finally {
    await scope.close();
    if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dir);
  }
}
