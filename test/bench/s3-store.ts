// `npm run bench -- s3-store`: replication of a repository of more than 1 GB
// into a single-node Ceph cluster (radosgw, memstore: the OSD in RAM, so
// the object store's disk is out of the comparison)
// through `holdfast store serve --backend s3`, against uploading the same
// files straight to a bucket with the same SDK (@aws-sdk/client-s3, one
// PutObject per file, as many at once as the replicator sends).
// Every run gets a cluster of its own (memstore's CPU per byte grows by
// more than half once it holds a few GB, which would favour whichever path
// runs first); rounds alternate the order; the median of each is compared.
// HOLDFAST_BENCH_ROUNDS (default 3); HOLDFAST_BENCH_CPU_PROF=DIR writes V8 CPU
// profiles of the store front-end (DIR) and the replicating client (DIR/client).
import fs from 'node:fs';
import path from 'node:path';

import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

import { startCeph } from '../helpers/ceph.ts';
import { makePki, startStore } from '../helpers/store.ts';
import { emit, heading, mib, note, passMark, ratio, round, say, secs, table } from './report.ts';
import { holdfast, peakRssKib, prepareData, processCpu, repoFiles, timedCpu } from './replication.ts';
import { BenchError, duBytes, removeTree, run, teardownScope, warmPageCache } from './run.ts';

const TENANT = 'bench';
const PASSWORD = 'holdfast-bench-passphrase';
/** The target: Holdfast's throughput at least 0.9 of the SDK's own. */
const TARGET = 0.9;
/** Files uploaded at once: the replicator's default concurrency. */
const CONCURRENCY = 4;
/** The baseline, a command of its own. */
const DIRECT = path.join(import.meta.dirname, 's3-direct.ts');

export interface S3StoreSummary {
  bytes: number;
  holdfast_mbps: number;
  direct_mbps: number;
  vs_direct: number;
  pass: Record<string, boolean>;
}

/** Keys and sizes in a bucket under a prefix. */
async function listed(client: S3Client, bucket: string, prefix: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let token: string | undefined;
  do {
    const r = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const c of r.Contents ?? []) out.set(c.Key!.slice(prefix.length), c.Size ?? 0);
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return out;
}

export async function benchS3Store(work: string): Promise<S3StoreSummary> {
  heading('s3-store: a 1 GB repository into Ceph RGW through holdfast store serve --backend s3, against the same files uploaded straight with the SDK');
  const data = prepareData(work);
  const dir = path.join(work, 's3-store');
  removeTree(dir);
  fs.mkdirSync(dir, { recursive: true });
  const repo = path.join(dir, 'repo');
  const env = { HOLDFAST_PASSWORD: PASSWORD, HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  run(holdfast(['init', '--repo', repo, '-q'], env));
  note('s3-store: holdfast backup of the data');
  run({ ...holdfast(['backup', '--repo', repo, '--json', data.dir], env), ok: [0, 3] });
  const want = repoFiles(repo);
  const bytes = [...want.values()].reduce((s, n) => s + n, 0);
  const du = duBytes(repo);
  say(`repository: ${want.size} files, ${bytes} bytes (${mib(bytes)}), du -sb ${du}`);
  if (du < 1e9) throw new BenchError(`the repository holds only ${du} bytes, less than 1 GB`);

  const pki = await makePki(path.join(dir, 'pki'), [TENANT], ['store']);
  const appliance = pki.cert(TENANT);
  const tlsFlags = ['--ca', pki.ca, '--cert', appliance.cert, '--key', appliance.key];
  const files = [...want.keys()].sort();
  say(`ceph: ${run({ file: 'ceph', args: ['--version'] }).stdout.trim()}; a fresh cluster for every run (memstore's cost per byte grows as it fills)`);

  const rounds = Math.max(1, Number(process.env.HOLDFAST_BENCH_ROUNDS ?? 3));
  const results: Record<'holdfast' | 'direct', number[]> = { holdfast: [], direct: [] };
  let target = 0;
  try {
    for (let r = 1; r <= rounds; r++) {
      for (const tool of r % 2 === 1 ? ['holdfast', 'direct'] as const : ['direct', 'holdfast'] as const) {
        // Each run on a cluster of its own, started just for it: the same state for both paths.
        const scope = teardownScope();
        try {
          const ceph = await startCeph(scope.t, { memstoreBytes: 4 * 2 ** 30 });
          /** CPU seconds of the Ceph daemons (radosgw, osd, mon) so far. */
          const cephCpu = () => ceph.pids.reduce((sum, pid) => sum + processCpu(pid), 0);
          const creds = { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey };
          const client = new S3Client({
            endpoint: ceph.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: creds,
            requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
            requestHandler: new NodeHttpHandler({ httpAgent: { keepAlive: true, maxSockets: 64 } }),
          });
          scope.t.teardown(() => client.destroy());
          const bucket = `bench-${tool}-${r}`;
          await client.send(new CreateBucketCommand({ Bucket: bucket }));
          warmPageCache(repo);
          const cephCpu0 = cephCpu();
          if (tool === 'direct') {
            note(`s3-store: the SDK straight to the bucket (round ${r})`);
            const spec = path.join(dir, 'direct.json');
            fs.writeFileSync(spec, JSON.stringify({ endpoint: ceph.endpoint, bucket, prefix: 'direct/', root: repo, files, concurrency: CONCURRENCY }));
            const t = timedCpu({ file: process.execPath, args: [DIRECT, spec], env: { ...process.env, AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey } });
            const cephSeconds = cephCpu() - cephCpu0;
            const loop = (JSON.parse(t.stdout.trim().split('\n').pop() ?? '{}') as { loop_seconds?: number }).loop_seconds ?? NaN;
            const got = await listed(client, bucket, 'direct/');
            if (got.size !== want.size || [...want].some(([k, n]) => got.get(k) !== n)) throw new BenchError('the direct upload did not store every file at its size');
            results.direct.push(t.seconds);
            say(`round ${r}: SDK PutObject x${files.length} (${CONCURRENCY} at once, own process) ${secs(t.seconds)} (${(bytes / t.seconds / 1e6).toFixed(0)} MB/s; upload loop alone ${secs(loop)}), SDK CPU ${t.cpu.toFixed(2)} s, Ceph CPU ${cephSeconds.toFixed(2)} s`);
            emit({ bench: 's3-store', tool: 'sdk-direct', round: r, seconds: t.seconds, loop_seconds: loop, mbps: round(bytes / t.seconds / 1e6, 1), sdk_cpu_seconds: round(t.cpu, 2), ceph_cpu_seconds: round(cephSeconds, 2), files: files.length });
          } else {
            const store = await startStore(scope.t, {
              pki, name: 'bench-s3',
              backend: ['--backend', 's3', '--s3-endpoint', ceph.endpoint, '--s3-bucket', bucket, '--s3-path-style'],
              env: { AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey, ...(process.env.HOLDFAST_BENCH_CPU_PROF ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${process.env.HOLDFAST_BENCH_CPU_PROF}` } : {}) },
            });
            target++;
            run(holdfast(['target', 'add', '--repo', repo, `s3-${target}`, '--endpoint', store.endpoint, ...tlsFlags], env));
            note(`s3-store: holdfast replicate (round ${r})`);
            const cpu0 = processCpu(store.pid);
            const t = timedCpu(holdfast(['--json', 'replicate', '--repo', repo, '--target', `s3-${target}`], { ...env, ...(process.env.HOLDFAST_BENCH_CPU_PROF ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${process.env.HOLDFAST_BENCH_CPU_PROF}/client` } : {}) }));
            const storeCpu = processCpu(store.pid) - cpu0;
            const cephSeconds = cephCpu() - cephCpu0;
            const storeRss = peakRssKib(store.pid);
            const out = JSON.parse(t.stdout.trimEnd().split('\n').pop() ?? '{}') as { targets?: { ok: boolean; result?: { sentFiles: number; sent: number } }[] };
            const res = out.targets?.[0];
            if (!res?.ok || res.result?.sentFiles !== want.size || res.result.sent !== bytes) {
              throw new BenchError(`holdfast replicate did not send the whole repository: ${t.stdout.slice(-800)}`);
            }
            // What a run costs apart from moving bytes (process start, connection, listing): the same command again, with nothing left to send.
            const idle = timedCpu(holdfast(['--json', 'replicate', '--repo', repo, '--target', `s3-${target}`], env));
            await store.stop();
            const got = await listed(client, bucket, `tenants/${TENANT}/`);
            const missing = [...want].filter(([k, n]) => got.get(k) !== n).map(([k]) => k);
            if (missing.length > 0) throw new BenchError(`the bucket lacks ${missing.length} of the repository's files (e.g. ${missing[0]})`);
            results.holdfast.push(t.seconds);
            say(`round ${r}: holdfast replicate -> store serve --backend s3 ${secs(t.seconds)} (${(bytes / t.seconds / 1e6).toFixed(0)} MB/s), client CPU ${t.cpu.toFixed(2)} s, store CPU ${storeCpu.toFixed(2)} s (peak RSS ${(storeRss / 1024).toFixed(0)} MiB), Ceph CPU ${cephSeconds.toFixed(2)} s; every file in the bucket at its size; the same command with nothing to send ${secs(idle.seconds)}`);
            emit({ bench: 's3-store', tool: 'holdfast', round: r, seconds: t.seconds, mbps: round(bytes / t.seconds / 1e6, 1), client_cpu_seconds: round(t.cpu, 2), store_cpu_seconds: round(storeCpu, 2), store_rss_kib: storeRss, ceph_cpu_seconds: round(cephSeconds, 2), nothing_to_send_seconds: idle.seconds, files: want.size });
          }
        } finally {
          await scope.close();
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
    const hf = median(results.holdfast);
    const direct = median(results.direct);
    const vs = round(direct / hf, 3);
    const pass = { throughput: vs >= TARGET };
    say('');
    table(['path', 'wall', 'MB/s'], [
      ['holdfast replicate -> store serve --backend s3 -> RGW', secs(hf), (bytes / hf / 1e6).toFixed(0)],
      [`@aws-sdk/client-s3 PutObject, ${CONCURRENCY} at once -> RGW`, secs(direct), (bytes / direct / 1e6).toFixed(0)],
    ]);
    say(`holdfast / direct throughput: ${ratio(vs)} (target >= ${TARGET}) ${passMark(pass.throughput)}`);
    const summary: S3StoreSummary = { bytes, holdfast_mbps: round(bytes / hf / 1e6, 1), direct_mbps: round(bytes / direct / 1e6, 1), vs_direct: vs, pass };
    emit({ bench: 's3-store', op: 'summary', rounds, ...summary });
    return summary;
  } finally {
    if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dir);
  }
}
