// `npm run bench [-- chunker|tree|versions|sources|replication|s3-store|console|fleet]`: Holdfast's benchmarks
// (see README.md here). No subcommand runs them all. Exit status 0 when every
// measurement ran (targets missed included); non-zero when a tool failed or a
// restore did not verify.
import fs from 'node:fs';
import os from 'node:os';

import { type ChunkerResult, benchChunker } from './chunker.ts';
import { type ConsoleSummary, benchConsole } from './console.ts';
import { type FleetSummary, benchFleet } from './fleet.ts';
import { emit, heading, humanOnStderr, note, say } from './report.ts';
import { BenchError, GNU_TIME, capture } from './run.ts';
import { toolVersions } from './tools.ts';
import { type ReplicationSummary, benchReplication } from './replication.ts';
import { type S3StoreSummary, benchS3Store } from './s3-store.ts';
import { type SourcesSummary, benchSources } from './sources.ts';
import { type TreeSummary, benchTree } from './tree.ts';
import { type VersionsSummary, benchVersions } from './versions.ts';

const SUBCOMMANDS = ['chunker', 'tree', 'versions', 'sources', 'replication', 's3-store', 'console', 'fleet'] as const;
type Subcommand = (typeof SUBCOMMANDS)[number];

function parseArgs(argv: string[]): Subcommand[] {
  if (argv.length === 0) return [...SUBCOMMANDS];
  for (const a of argv) {
    if (!(SUBCOMMANDS as readonly string[]).includes(a)) {
      throw new BenchError(`unknown benchmark ${JSON.stringify(a)}; use one or more of: ${SUBCOMMANDS.join(', ')} (none: all)`);
    }
  }
  return SUBCOMMANDS.filter((s) => argv.includes(s));
}

function machineFacts(work: string): Record<string, unknown> {
  return {
    nproc: Number(capture('nproc', [])) || os.availableParallelism(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    kernel: `${os.type()} ${os.release()}`,
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    ...toolVersions(work),
  };
}

function checkPrerequisites(): void {
  if (Number(process.versions.node.split('.')[0]) < 26) throw new BenchError(`needs Node 26, running ${process.version}`);
  if (!fs.existsSync(GNU_TIME)) throw new BenchError(`${GNU_TIME} (GNU time, Debian package \`time\`) is missing`);
}

async function main(argv: string[]): Promise<void> {
  const which = parseArgs(argv);
  const chunkerOnly = which.length === 1 && which[0] === 'chunker';
  // `bench chunker` prints exactly one JSON line on stdout
  humanOnStderr(chunkerOnly);
  checkPrerequisites();
  const work = process.env.HOLDFAST_BENCH_DIR ?? '/var/tmp/holdfast-bench';
  fs.mkdirSync(work, { recursive: true });

  if (!chunkerOnly) {
    const facts = machineFacts(work);
    heading('machine');
    for (const [k, v] of Object.entries(facts)) say(`${k.padEnd(10)} ${String(v).replace(/\n/g, '\n           ')}`);
    say(`work dir   ${work}`);
    emit({ bench: 'machine', ...facts, work_dir: work });
  }

  const started = performance.now();
  let chunker: ChunkerResult | undefined;
  let tree: TreeSummary | undefined;
  let versions: VersionsSummary | undefined;
  let sources: SourcesSummary | undefined;
  let replication: ReplicationSummary | undefined;
  let s3Store: S3StoreSummary | undefined;
  let consoleApi: ConsoleSummary | undefined;
  let fleet: FleetSummary | undefined;
  if (which.includes('chunker')) {
    if (!chunkerOnly) heading('chunker: native FastCDC, one thread, 1 GiB of random bytes');
    chunker = await benchChunker();
  }
  if (which.includes('tree')) tree = benchTree(work);
  if (which.includes('versions')) versions = benchVersions(work);
  if (which.includes('sources')) sources = await benchSources(work);
  if (which.includes('replication')) replication = await benchReplication(work);
  if (which.includes('s3-store')) s3Store = await benchS3Store(work);
  if (which.includes('console')) consoleApi = await benchConsole(work);
  if (which.includes('fleet')) fleet = await benchFleet(work);
  if (chunkerOnly) return;

  const pass: Record<string, boolean> = {};
  if (chunker) pass.chunker_ratio = chunker.pass;
  for (const [k, v] of Object.entries(tree?.pass ?? {})) pass[`tree_${k}`] = v;
  if (versions) pass.versions_repo_size = versions.pass.repo_size;
  for (const [k, v] of Object.entries(sources?.pass ?? {})) pass[`sources_${k}`] = v;
  for (const [k, v] of Object.entries(replication?.pass ?? {})) pass[`replication_${k}`] = v;
  for (const [k, v] of Object.entries(s3Store?.pass ?? {})) pass[`s3_store_${k}`] = v;
  for (const [k, v] of Object.entries(consoleApi?.pass ?? {})) pass[`console_${k}`] = v;
  for (const [k, v] of Object.entries(fleet?.pass ?? {})) pass[`fleet_${k}`] = v;
  const seconds = Math.round((performance.now() - started) / 1000);
  heading('summary');
  for (const [k, v] of Object.entries(pass)) say(`${v ? 'PASS' : 'FAIL'}  ${k}`);
  say(`${Object.values(pass).filter(Boolean).length} of ${Object.keys(pass).length} targets met in ${seconds} s`);
  emit({
    bench: 'summary',
    ...(chunker ? { chunker: { gbps: chunker.gbps, sha256_gbps: chunker.sha256_gbps, ratio: chunker.ratio } } : {}),
    ...(tree ? { tree: { files: tree.files, bytes: tree.bytes, vs_restic: tree.vs_restic, vs_borg: tree.vs_borg } } : {}),
    ...(sources ? { sources: { files: sources.files, bytes: sources.bytes, ratios: sources.ratios } } : {}),
    ...(replication ? { replication: { bytes: replication.bytes, holdfast_mbps: replication.holdfast_mbps, rsync_mbps: replication.rsync_mbps, vs_rsync: replication.vs_rsync, conn_per_second: replication.conn_per_second, idle: replication.idle } } : {}),
    ...(s3Store ? { s3_store: { bytes: s3Store.bytes, holdfast_mbps: s3Store.holdfast_mbps, direct_mbps: s3Store.direct_mbps, vs_direct: s3Store.vs_direct } } : {}),
    ...(consoleApi ? { console: { clients: consoleApi.clients, requests: consoleApi.requests, p95_ms: consoleApi.p95_ms, page_ms: consoleApi.page_ms } } : {}),
    ...(fleet ? { fleet: { boxes: fleet.boxes, compress: fleet.compress, heartbeats: fleet.heartbeats, achieved_per_second: fleet.achieved_per_second, p95_ms: fleet.p95_ms, errors: fleet.errors, enroll_per_second: fleet.enroll_per_second, rss_kib: fleet.rss_kib, db_bytes: fleet.db_bytes } } : {}),
    ...(versions ? { versions: { repo_bytes: versions.repo_bytes, seconds: versions.seconds, size_vs_restic: versions.size_vs_restic, size_vs_borg: versions.size_vs_borg } } : {}),
    pass,
    all_pass: Object.values(pass).every(Boolean),
    seconds,
  });
}

try {
  await main(process.argv.slice(2));
} catch (err) {
  note(`\nBENCHMARK FAILED: ${err instanceof Error ? err.message : String(err)}`);
  if (!(err instanceof BenchError) && err instanceof Error && err.stack) note(err.stack);
  process.exitCode = 1;
}
