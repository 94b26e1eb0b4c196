// The native chunker alone, single thread, against OpenSSL's SHA-256 speed on
// this machine.
import { randomBytes, randomFillSync } from 'node:crypto';

import { Chunker, deriveGearTable, release } from '../../native/index.ts';
import { emit, note, round, say } from './report.ts';
import { run } from './run.ts';

const SIZE = 1 << 30;
const FILL_PIECE = 64 << 20;
/** Chunker and SHA-256 runs, taking turns (best of each compared): the machine's speed drifts between runs. */
const RUNS = 5;
const PARAMS = { minSize: 256 << 10, avgSize: 1 << 20, maxSize: 4 << 20 };
const TARGET_RATIO = 1.5;

export interface ChunkerResult {
  gbps: number;
  sha256_gbps: number;
  ratio: number;
  target_ratio: number;
  pass: boolean;
}

function randomBuffer(size: number): Buffer {
  const buf = Buffer.allocUnsafeSlow(size);
  for (let o = 0; o < size; o += FILL_PIECE) randomFillSync(buf, o, Math.min(FILL_PIECE, size - o));
  return buf;
}

/** One pass over buf with a fresh boundaries-only chunker: seconds and chunk lengths. */
async function chunkOnce(gear: Buffer, buf: Buffer): Promise<{ seconds: number; lengths: number[] }> {
  const chunker = new Chunker(gear, PARAMS, null);
  const t0 = performance.now();
  const chunks = await chunker.update(buf, true);
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, lengths: chunks.map((c) => c.length) };
}

/**
 * OpenSSL SHA-256 throughput in GB/s from `openssl speed`, whose figures are
 * in units of 1000 bytes per second.
 */
export function opensslSha256Gbps(seconds = 3): { gbps: number; line: string } {
  const r = run({ file: 'openssl', args: ['speed', '-evp', 'sha256', '-bytes', '16384', '-seconds', String(seconds)] });
  const lines = r.stdout.split('\n');
  const header = lines.find((l) => /^type\s/.test(l));
  const data = lines.find((l) => /^sha256\s/i.test(l));
  if (!header || !data) throw new Error(`cannot find the sha256 result in openssl speed output:\n${r.stdout}`);
  const columns = header.replace(/^type\s+/, '').split(/\s{2,}/).map((c) => c.trim());
  const col = columns.indexOf('16384 bytes');
  const value = data.trim().split(/\s+/).slice(1)[col];
  const m = value ? /^(\d+(?:\.\d+)?)k$/.exec(value) : null;
  if (col < 0 || !m) throw new Error(`cannot parse the 16384-byte column of openssl speed:\n${header}\n${data}`);
  return { gbps: (Number(m[1]) * 1000) / 1e9, line: data.trim() };
}

export async function benchChunker(): Promise<ChunkerResult> {
  note(`chunker: filling ${SIZE} random bytes`);
  const buf = randomBuffer(SIZE);
  const gear = deriveGearTable(randomBytes(32));
  const seconds: number[] = [];
  const shas: { gbps: number; line: string }[] = [];
  let lengths: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await chunkOnce(gear, buf);
    seconds.push(r.seconds);
    lengths = r.lengths;
    shas.push(opensslSha256Gbps(1));
    note(`chunker: run ${i + 1}: ${r.seconds.toFixed(3)} s, ${r.lengths.length} chunks; openssl speed -evp sha256 -bytes 16384 -seconds 1: ${shas.at(-1)!.gbps.toFixed(3)} GB/s`);
  }
  release(buf);
  const covered = lengths.reduce((a, b) => a + b, 0);
  if (covered !== SIZE) throw new Error(`chunker covered ${covered} bytes of ${SIZE}`);

  const sha = shas.reduce((a, b) => (b.gbps > a.gbps ? b : a));
  const best = Math.min(...seconds);
  const gbps = SIZE / best / 1e9;
  const ratio = gbps / sha.gbps;
  const result: ChunkerResult & Record<string, unknown> = {
    bench: 'chunker',
    gbps: round(gbps, 3),
    bytes: SIZE,
    best_seconds: round(best, 4),
    run_seconds: seconds.map((s) => round(s, 4)),
    sha256_run_gbps: shas.map((x) => round(x.gbps, 3)),
    chunks: lengths.length,
    mean_chunk_bytes: Math.round(SIZE / lengths.length),
    params: PARAMS,
    threads: 1,
    sha256_gbps: round(sha.gbps, 3),
    sha256_openssl: sha.line,
    ratio: round(ratio, 3),
    target_ratio: TARGET_RATIO,
    pass: ratio >= TARGET_RATIO,
  };
  say(`chunker: ${result.gbps} GB/s (best of ${RUNS}), ${result.chunks} chunks, mean ${result.mean_chunk_bytes} B; ` +
    `OpenSSL SHA-256 ${result.sha256_gbps} GB/s (best of ${RUNS}, taking turns with the chunker); ratio ${result.ratio} (target >= ${TARGET_RATIO}: ${result.pass ? 'PASS' : 'FAIL'})`);
  emit(result);
  return result;
}
