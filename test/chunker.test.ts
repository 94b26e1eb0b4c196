import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { type Chunk, Chunker, type ChunkerParams, Hasher, ReferenceChunker, deriveGearTable } from '../native/index.ts';
import { VECTOR_CASES, vectorData, vectorKeys } from './fixtures/chunker-cases.ts';

const DEFAULT: ChunkerParams = { minSize: 256 << 10, avgSize: 1 << 20, maxSize: 4 << 20 };
const SMALL: ChunkerParams = { minSize: 2048, avgSize: 8192, maxSize: 32768 };

const summary = (chunks: Chunk[]) => chunks.map((c) => `${c.length}:${c.id.toString('hex')}`);

/** Feeds data to a chunker in pieces cut at the given offsets. */
async function feed(chunker: Chunker, data: Buffer, cuts: number[]): Promise<Chunk[]> {
  const out: Chunk[] = [];
  let at = 0;
  for (const c of [...cuts, data.length]) {
    out.push(...(await chunker.update(data.subarray(at, c), c === data.length)));
    at = c;
  }
  return out;
}

function randomCuts(length: number, count: number): number[] {
  const cuts = new Set<number>();
  while (cuts.size < count) cuts.add(1 + Math.floor(Math.random() * (length - 1)));
  return [...cuts].sort((a, b) => a - b);
}

t.test('frozen test vectors: native and reference give the recorded boundaries and ids', async (t) => {
  const frozen = JSON.parse(fs.readFileSync(path.join(import.meta.dirname, 'fixtures', 'chunker-vectors.json'), 'utf8'));
  const { gearSecret, idKey } = vectorKeys();
  const gear = deriveGearTable(gearSecret);
  t.equal(createHash('sha256').update(gear).digest('hex'), frozen.gearSha256, 'gear table derivation is unchanged');
  for (const c of VECTOR_CASES) {
    const want = frozen.cases.find((x: { name: string }) => x.name === c.name);
    const data = vectorData(c.data);
    for (const [label, chunks] of [
      ['native', await new Chunker(gear, c.params, idKey).update(data, true)],
      ['reference', new ReferenceChunker(gear, c.params, idKey).update(data, true)],
    ] as const) {
      const ids = createHash('sha256');
      for (const ch of chunks) ids.update(ch.id);
      t.same(chunks.map((ch) => ch.length), want.lengths, `${c.name}: ${label} boundaries`);
      t.equal(ids.digest('hex'), want.idsDigest, `${c.name}: ${label} ids`);
    }
  }
});

t.test('native equals reference on random input, sizes and ids', async (t) => {
  for (const params of [SMALL, DEFAULT, { minSize: 64, avgSize: 256, maxSize: 1024 }]) {
    const gear = deriveGearTable(randomBytes(32));
    const key = randomBytes(32);
    const data = randomBytes(params.maxSize * 9 + 12345);
    data.fill(0, 1000, 1000 + params.maxSize * 2); // a run of zeros: max-size cuts
    const native = await new Chunker(gear, params, key).update(data, true);
    const ref = new ReferenceChunker(gear, params, key).update(data, true);
    t.same(summary(native), summary(ref), `min ${params.minSize} avg ${params.avgSize} max ${params.maxSize}`);
    t.equal(native.reduce((a, c) => a + c.length, 0), data.length, 'chunks cover the input');
    t.ok(native.every((c, i) => c.length <= params.maxSize && (c.length >= params.minSize || i === native.length - 1)), 'sizes within bounds');
  }
});

t.test('any split of the stream gives the same boundaries (property)', async (t) => {
  const gear = deriveGearTable(randomBytes(32));
  const key = randomBytes(32);
  const data = randomBytes(3 << 20);
  const whole = summary(await new Chunker(gear, SMALL, key).update(data, true));
  t.ok(whole.length > 100);
  for (let trial = 0; trial < 30; trial++) {
    const cuts = randomCuts(data.length, 1 + Math.floor(Math.random() * 400));
    t.same(summary(await feed(new Chunker(gear, SMALL, key), data, cuts)), whole, `random split ${trial}`);
  }
  // byte at a time, native and reference
  const small = data.subarray(0, 150_000);
  const smallWhole = summary(await new Chunker(gear, SMALL, key).update(small, true));
  const every = Array.from({ length: small.length - 1 }, (_, i) => i + 1);
  t.same(summary(await feed(new Chunker(gear, SMALL, key), small, every)), smallWhole, 'native, byte at a time');
  const ref = new ReferenceChunker(gear, SMALL, key);
  const refChunks: Chunk[] = [];
  for (let i = 0; i < small.length; i++) refChunks.push(...ref.update(small.subarray(i, i + 1), i === small.length - 1));
  t.same(summary(refChunks), smallWhole, 'reference, byte at a time');
  // an empty final piece, and reuse after final
  const c = new Chunker(gear, SMALL, key);
  const split = [...(await c.update(small, false)), ...(await c.update(Buffer.alloc(0), true))];
  t.same(summary(split), smallWhole, 'empty final update');
  t.same(summary(await c.update(small, true)), smallWhole, 'the chunker starts over after final');
  t.same(await new Chunker(gear, SMALL, key).update(Buffer.alloc(0), true), [], 'an empty stream has no chunks');
});

t.test('boundaries depend on the keyed gear table; ids on the id key', async (t) => {
  const data = randomBytes(2 << 20);
  const key = randomBytes(32);
  const a = await new Chunker(deriveGearTable(randomBytes(32)), SMALL, key).update(data, true);
  const b = await new Chunker(deriveGearTable(randomBytes(32)), SMALL, key).update(data, true);
  t.not(a.map((c) => c.length).join(), b.map((c) => c.length).join(), 'another secret, other boundaries');
  const gear = deriveGearTable(randomBytes(32));
  const k1 = await new Chunker(gear, SMALL, randomBytes(32)).update(data, true);
  const k2 = await new Chunker(gear, SMALL, randomBytes(32)).update(data, true);
  t.same(k1.map((c) => c.length), k2.map((c) => c.length), 'same gear, same boundaries');
  t.not(k1[0]!.id.toString('hex'), k2[0]!.id.toString('hex'), 'another id key, other ids');
  t.ok((await new Chunker(gear, SMALL, null).update(data, true)).every((c) => c.id.equals(Buffer.alloc(32))), 'no key: boundaries only');
});

t.test('mean chunk size is near the target', async (t) => {
  const chunks = await new Chunker(deriveGearTable(randomBytes(32)), DEFAULT, null).update(randomBytes(96 << 20), true);
  const mean = (96 << 20) / chunks.length;
  t.ok(mean > 0.8 * (1 << 20) && mean < 1.6 * (1 << 20), `mean ${(mean / 1024).toFixed(0)} KiB for a 1 MiB target`);
});

t.test('chunking runs on the threadpool, not the event loop', async (t) => {
  const data = randomBytes(256 << 20);
  const chunker = new Chunker(deriveGearTable(randomBytes(32)), DEFAULT, randomBytes(32));
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const started = performance.now();
  await chunker.update(data, true);
  const ms = performance.now() - started;
  clearInterval(timer);
  t.ok(ticks >= ms / 20, `the event loop ticked ${ticks} times during ${ms.toFixed(0)} ms of chunking`);
});

t.test('bad input gets coded errors', async (t) => {
  const gear = deriveGearTable(randomBytes(32));
  t.throws(() => new Chunker(gear, { minSize: 10, avgSize: 1024, maxSize: 4096 }, null), { code: 'HF_INVALID_ARGUMENT' });
  t.throws(() => new Chunker(gear, { minSize: 1024, avgSize: 3000, maxSize: 8192 }, null), { code: 'HF_INVALID_ARGUMENT' }, 'avg not a power of two');
  t.throws(() => new Chunker(Buffer.alloc(100), SMALL, null), { code: 'HF_INVALID_ARGUMENT' });
  t.throws(() => new Chunker(gear, SMALL, Buffer.alloc(5)), { code: 'HF_INVALID_ARGUMENT' });
  t.throws(() => deriveGearTable(Buffer.alloc(4)), { code: 'HF_INVALID_ARGUMENT' });
  const c = new Chunker(gear, SMALL, null);
  const pending = c.update(randomBytes(8 << 20), true);
  await t.rejects(c.update(Buffer.alloc(10), true), { code: 'HF_CHUNKER_BUSY' }, 'one update at a time');
  await pending;
});

t.test('the incremental SHA-256 state continues in another hasher: the digest of the whole, at any split', async (t) => {
  const data = randomBytes(300_000);
  for (const split of [0, 1, 55, 63, 64, 65, 127, 128, 4096, 299_999, 300_000]) {
    const a = new Hasher();
    await a.update([data.subarray(0, split)]);
    const state = a.state();
    t.equal(state.length, 109, `split at ${split}: a state of 109 bytes`);
    const b = Hasher.fromState(state);
    await b.update([data.subarray(split)]);
    t.equal(b.digest().toString('hex'), createHash('sha256').update(data).digest('hex'), `split at ${split}: the digest of the whole`);
  }
  t.throws(() => Hasher.fromState(Buffer.alloc(10)), { code: 'HF_INVALID_ARGUMENT' }, 'a state of the wrong length is refused');
  const bad = new Hasher().state();
  bad[bad.length - 4] = 7; // 7 bytes buffered, but a bit count of 0
  t.throws(() => Hasher.fromState(bad), { code: 'HF_INVALID_ARGUMENT' }, 'a state whose parts do not add up is refused');
  const busy = new Hasher();
  const running = busy.update([data]);
  t.throws(() => busy.state(), { code: 'HF_HASHER_BUSY' }, 'no state while an update runs');
  await running;
});
