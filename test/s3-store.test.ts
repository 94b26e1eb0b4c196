import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CreateBucketCommand, DeleteObjectCommand, GetObjectRetentionCommand, HeadObjectCommand, ListObjectVersionsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import t, { type Test } from 'tap';

import { S3StoreBackend, type S3StoreOptions } from '../appliance/store/s3-store-backend.ts';
import { cephInstalled, startCeph } from './helpers/ceph.ts';
import { storeBackendSuite, storeFile } from './helpers/store-backend-suite.ts';
import { tmpDir } from './helpers/tmp.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const PART = 5 << 20;

if (!cephInstalled()) {
  t.fail('Ceph is not installed (ceph-mon, ceph-osd, radosgw): run scripts/setup.sh');
} else {
  const ceph = await startCeph(t);
  const admin = new S3Client({
    endpoint: ceph.endpoint, region: 'us-east-1', forcePathStyle: true,
    credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
  t.teardown(() => admin.destroy());
  let buckets = 0;
  const newBucket = async (lock = false) => {
    const name = `hf-test-${process.pid}-${++buckets}`;
    await admin.send(new CreateBucketCommand({ Bucket: name, ...(lock ? { ObjectLockEnabledForBucket: true } : {}) }));
    return name;
  };
  const open = async (t: Test, bucket: string, o: Partial<S3StoreOptions> = {}) => {
    const b = new S3StoreBackend({
      endpoint: ceph.endpoint, bucket, pathStyle: true, region: 'us-east-1',
      credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey },
      graceSeconds: 30 * 86400, partSize: PART, singlePutMax: 0, ...o,
    });
    await b.initialize();
    t.teardown(() => b.close());
    return b;
  };

  t.test('the StoreBackend conformance suite on Ceph RGW (every file as a multipart upload in 5 MiB parts)', async (t) => {
    storeBackendSuite(t, {
      unit: PART,
      make: async (t) => {
        const bucket = await newBucket();
        return { backend: await open(t, bucket), twin: () => open(t, bucket) };
      },
    });
  });

  t.test('the conformance suite again with files up to 4 MiB in one PUT, under a key prefix', async (t) => {
    storeBackendSuite(t, {
      unit: PART,
      make: async (t) => {
        const bucket = await newBucket();
        const o = { singlePutMax: 4 << 20, prefix: 'offsite/eu-1/' };
        return { backend: await open(t, bucket, o), twin: () => open(t, bucket, o) };
      },
    });
  });

  t.test('a resumed multipart upload sends only the parts S3 lacks, and the digest spans both front-ends', async (t) => {
    const bucket = await newBucket();
    const a = await open(t, bucket);
    const data = randomBytes(4 * PART + 333);
    const name = sha(data);
    const u = await a.openUpload('acme', 'pack', name, name);
    await u.write([data.subarray(0, 2 * PART + 1000)], 0);
    await u.close(); // two parts recorded; the 1000 bytes short of a part are dropped
    t.equal(await a.partial('acme', 'pack', name, name), 2 * PART, 'two whole parts kept');

    const b = await open(t, bucket);
    const sent: number[] = [];
    b.client.middlewareStack.add((next, ctx) => async (args) => {
      if (ctx.commandName === 'UploadPartCommand') sent.push((args.input as { PartNumber: number }).PartNumber);
      return next(args);
    }, { step: 'initialize', name: 'countParts' });
    const r = await b.openUpload('acme', 'pack', name, name);
    t.equal(r.stored, 2 * PART, 'the other front-end resumes at the part boundary');
    const { at } = await r.resumeAt(r.stored);
    await r.write([data.subarray(at)], at);
    await r.commit(data.length);
    await r.close();
    t.same(sent, [3, 4, 5], 'only parts 3, 4 and 5 were sent');
    t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'the object is byte-identical');

    // a corrupted resume: the bytes after the boundary differ from the ones hashed before
    const other = randomBytes(3 * PART);
    const on = sha(other);
    const u1 = await a.openUpload('acme', 'pack', on, on);
    await u1.write([other.subarray(0, PART)], 0);
    await u1.close();
    const u2 = await b.openUpload('acme', 'pack', on, on);
    const wrong = Buffer.from(other.subarray(PART));
    wrong[0] = wrong[0]! ^ 0xff;
    await u2.write([wrong], PART);
    await t.rejects(u2.commit(other.length), { code: 'HF_STORE_DIGEST_MISMATCH' }, 'a wrong byte after a resume is caught before the object exists');
    await u2.close();
    t.equal(await a.stat('acme', 'pack', on), null, 'nothing became visible');
    t.equal(await a.partial('acme', 'pack', on, on), null, 'and the upload is gone');
  });

  t.test('a front-end killed in the middle of an upload: another takes it over once the claim lapses, and sends only what S3 lacks', async (t) => {
    const bucket = await newBucket();
    const data = randomBytes(3 * PART + 4321);
    const name = sha(data);
    const dir = tmpDir(t, 'hf-s3-kill-');
    fs.writeFileSync(path.join(dir, 'data'), data);
    const backendUrl = new URL('../appliance/store/s3-store-backend.ts', import.meta.url).href;
    // A front-end of its own (another process): claims the upload, sends two parts, says so, and is SIGKILLed.
    const script = `
      import fs from 'node:fs';
      const { S3StoreBackend } = await import(${JSON.stringify(backendUrl)});
      const b = new S3StoreBackend(${JSON.stringify({ endpoint: ceph.endpoint, bucket, pathStyle: true, credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey }, graceSeconds: 60, partSize: PART, singlePutMax: 0, leaseSeconds: 3 })});
      await b.initialize();
      const data = fs.readFileSync(${JSON.stringify(path.join(dir, 'data'))});
      const u = await b.openUpload('acme', 'pack', ${JSON.stringify(name)}, ${JSON.stringify(name)});
      await u.write([data.subarray(0, 3 * ${PART})], 0);
      console.log('sent');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: path.dirname(fileURLToPath(import.meta.url)), stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('sent')) resolve(); });
      child.on('exit', (code) => reject(new Error(`the front-end exited ${code}: ${err}`)));
    });
    const b = await open(t, bucket, { leaseSeconds: 3 });
    await t.rejects(b.openUpload('acme', 'pack', name, name), { code: 'HF_STORE_BUSY' }, 'busy while the other front-end is alive and renews its claim');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const start = Date.now();
    let taken = null;
    while (!taken && Date.now() - start < 20_000) {
      taken = await b.openUpload('acme', 'pack', name, name).catch((e: { code?: string }) => { if (e.code !== 'HF_STORE_BUSY') throw e; return null; });
      if (!taken) await new Promise((r) => setTimeout(r, 500));
    }
    t.ok(taken, `taken over ${((Date.now() - start) / 1000).toFixed(1)} s after the kill (lease 3 s)`);
    t.ok(taken!.stored >= PART && taken!.stored <= 3 * PART && taken!.stored % PART === 0, `it resumes at a part boundary the killed front-end reached (${taken!.stored / PART} of the 3 parts it sent are in S3)`);
    const sent: number[] = [];
    b.client.middlewareStack.add((next, ctx) => async (args) => {
      if (ctx.commandName === 'UploadPartCommand') sent.push((args.input as { PartNumber: number }).PartNumber);
      return next(args);
    }, { step: 'initialize', name: 'countParts' });
    const { at } = await taken!.resumeAt(taken!.stored);
    await taken!.write([data.subarray(at)], at);
    await taken!.commit(data.length);
    await taken!.close();
    t.equal(sent[0], at / PART + 1, `the first part sent is the one after those recorded (part ${at / PART + 1})`);
    t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'and the object is byte-identical');
  });

  t.test('a missing bucket and wrong credentials are coded errors', async (t) => {
    await t.rejects(open(t, 'no-such-bucket-here'), { code: 'HF_STORE_S3_NO_BUCKET' }, 'a bucket that does not exist: HF_STORE_S3_NO_BUCKET');
    const bucket = await newBucket();
    await t.rejects(open(t, bucket, { credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: 'wrong' } }), { code: 'HF_STORE_S3_ACCESS_DENIED' }, 'a wrong secret key: HF_STORE_S3_ACCESS_DENIED');
    const dead = new S3StoreBackend({ endpoint: 'http://127.0.0.1:9', bucket, pathStyle: true, graceSeconds: 60, credentials: { accessKeyId: 'x', secretAccessKey: 'y' } });
    t.teardown(() => dead.close());
    await t.rejects(dead.initialize(), { code: 'HF_STORE_S3_UNAVAILABLE' }, 'nothing listening: HF_STORE_S3_UNAVAILABLE');
  });

  t.test('a one-PUT file is checked by the object store: RGW refuses bytes that do not hash to the announced digest, and nothing becomes visible', async (t) => {
    const bucket = await newBucket();
    const b = await open(t, bucket, { singlePutMax: 4 << 20 });
    t.equal(b.info.payloadChecked, true, 'found at start-up: RGW refuses a PUT whose body does not hash to its payload hash');
    await t.rejects(admin.send(new HeadObjectCommand({ Bucket: bucket, Key: 'payload-check' })), { name: 'NotFound' }, 'the refused probe left no object');
    const data = randomBytes(300_000);
    const name = sha(data);
    const u = await b.openUpload('acme', 'pack', name, name);
    t.equal(u.checksDigest, true, 'the upload checks the digest itself (the store session does not hash)');
    const bad = Buffer.from(data);
    bad[123_456] = bad[123_456]! ^ 0x10;
    await u.write([bad], 0);
    await t.rejects(u.commit(data.length), { code: 'HF_STORE_DIGEST_MISMATCH', message: /object store refused/ }, 'one flipped bit: HF_STORE_DIGEST_MISMATCH, from the object store');
    await u.close();
    t.equal(await b.stat('acme', 'pack', name), null, 'the file is not there');
    t.equal(await b.partial('acme', 'pack', name, name), null, 'nor an upload of it');
    // With the size announced, the PUT goes out while the bytes arrive.
    const streamed = await b.openUpload('acme', 'pack', name, name, data.length);
    await streamed.write([bad.subarray(0, 200_000)], 0);
    await streamed.write([bad.subarray(200_000)], 200_000);
    await t.rejects(streamed.commit(data.length), { code: 'HF_STORE_DIGEST_MISMATCH', message: /object store refused/ }, 'streamed: one flipped bit is refused by the object store too');
    await streamed.close();
    t.equal(await b.stat('acme', 'pack', name), null, 'the file is not there');
    const cut = await b.openUpload('acme', 'pack', name, name, data.length);
    await cut.write([data.subarray(0, 150_000)], 0);
    await cut.close();
    t.equal(await b.stat('acme', 'pack', name), null, 'a streamed upload closed before its last byte (a dropped connection) stores nothing');
    const good = await b.openUpload('acme', 'pack', name, name, data.length);
    await good.write([data.subarray(0, 100_000), data.subarray(100_000)], 0);
    await good.commit(data.length);
    await good.close();
    t.ok((await b.read('acme', 'pack', name, 0, data.length)).equals(data), 'the right bytes under the same name are stored and read back');
  });

  t.test('a file announced at most the single-PUT size is stored by one conditional PUT: no claim, no upload state, two front-ends at once store it once', async (t) => {
    const bucket = await newBucket();
    const a = await open(t, bucket, { singlePutMax: 4 << 20 });
    const b = await open(t, bucket, { singlePutMax: 4 << 20 });
    const data = randomBytes(3 << 20);
    const name = sha(data);
    const ua = await a.openUpload('acme', 'pack', name, name, data.length);
    const ub = await b.openUpload('acme', 'pack', name, name, data.length);
    t.pass('a second upload of the same file on another front-end is not HF_STORE_BUSY');
    await ua.write([data.subarray(0, 1 << 20)], 0);
    await ub.write([data], 0);
    const keys = ((await admin.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map((c) => c.Key!);
    t.same(keys.filter((k) => k.includes('/partial/')), [], 'while they receive, the bucket holds no claim and no upload state');
    await ua.write([data.subarray(1 << 20)], 1 << 20);
    await t.rejects(ua.write([Buffer.alloc(1)], data.length), { code: 'HF_STORE_BAD_OFFSET' }, 'a byte past the announced size: HF_STORE_BAD_OFFSET');
    await ub.commit(data.length);
    const key = `tenants/acme/data/${name.slice(0, 2)}/${name}`;
    const first = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    await new Promise((r) => setTimeout(r, 1100)); // past a whole second of LastModified
    await ua.commit(data.length);
    await ua.close();
    await ub.close();
    t.ok((await a.read('acme', 'pack', name, 0, data.length)).equals(data), 'both commits resolve; the file is byte-identical');
    const second = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    t.same([second.LastModified, second.ETag], [first.LastModified, first.ETag], 'written once: the second PUT found it there (If-None-Match) and left it as it was');
    t.equal(await a.partial('acme', 'pack', name, name), null, 'no upload left');
  });

  t.test('claims hold on a versioned (Object Lock) bucket too, where RGW ignores If-None-Match: of two front-ends claiming a file at once, exactly one gets it', async (t) => {
    const bucket = await newBucket(true);
    const fronts = [await open(t, bucket), await open(t, bucket)];
    for (let i = 0; i < 5; i++) {
      const name = sha(Buffer.from(`race ${i}`));
      const got = await Promise.allSettled(fronts.map((f) => f.openUpload('acme', 'pack', name, name)));
      const won = got.filter((g) => g.status === 'fulfilled');
      const busy = got.filter((g) => g.status === 'rejected' && (g.reason as { code?: string }).code === 'HF_STORE_BUSY');
      t.equal(won.length, 1, `race ${i}: one front-end holds the claim`);
      t.equal(busy.length, 1, `race ${i}: the other is HF_STORE_BUSY`);
      for (const w of won) await (w as PromiseFulfilledResult<Awaited<ReturnType<S3StoreBackend['openUpload']>>>).value.close();
      const again = await fronts[1]!.openUpload('acme', 'pack', name, name);
      t.pass(`race ${i}: once the winner is done, the file can be claimed again`);
      await again.close();
    }
  });

  t.test('Object Lock: every stored file and tombstone is retained for the grace period; S3 refuses to delete it early; purge deletes it after', async (t) => {
    const plain = await open(t, await newBucket());
    t.same(plain.info, { objectLock: false, versioned: false, payloadChecked: true }, 'a bucket without Object Lock is reported as such');
    const bucket = await newBucket(true);
    const grace = 4;
    const b = await open(t, bucket, { graceSeconds: grace, singlePutMax: 32 << 20 });
    t.same(b.info, { objectLock: true, versioned: true, payloadChecked: true }, 'a bucket with Object Lock is found at start-up');
    const small = randomBytes(1000);
    const big = randomBytes(PART + 77);
    const ns = await storeFile(b, 'acme', 'pack', small);
    const b2 = await open(t, bucket, { graceSeconds: grace, singlePutMax: 0 });
    const nb = await storeFile(b2, 'acme', 'pack', big);
    const versions = async (prefix: string) => (await admin.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: prefix }))).Versions ?? [];
    const keyOf = (n: string) => `tenants/acme/data/${n.slice(0, 2)}/${n}`;
    for (const [what, n] of [['one PUT', ns], ['a multipart upload', nb]] as const) {
      const [v] = await versions(keyOf(n));
      await t.rejects(admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: keyOf(n), VersionId: v!.VersionId })), { name: 'AccessDenied' },
        `a file stored by ${what}: a DELETE of its version through the S3 API is refused before the retention ends`);
    }
    const deletedAt = new Date();
    await b.remove('acme', 'pack', ns, deletedAt);
    const [tomb] = await versions('tenants/acme/trash/');
    t.ok(tomb, 'the tombstone is an object of its own');
    await t.rejects(admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: tomb!.Key!, VersionId: tomb!.VersionId })), { name: 'AccessDenied' },
      'the tombstone cannot be deleted through the S3 API either');
    t.equal(await b.purge(new Date(deletedAt.getTime() - 1000)), 0, 'purge inside the grace period deletes nothing');
    t.same((await b.trash('acme')).map((e) => e.name), [ns], 'the file is in the trash');
    await new Promise((r) => setTimeout(r, (grace + 1.5) * 1000));
    t.equal(await b.purge(new Date(Date.now() - grace * 1000)), 1, 'after the grace period purge deletes the file for good');
    t.same(await versions(keyOf(ns)), [], 'no version of the file is left');
    t.same(await versions('tenants/acme/trash/'), [], 'nor of its tombstone');
    t.equal(await b.stat('acme', 'pack', nb), big.length, 'the other file is untouched');
  });

  t.test('Object Lock: a live file stays under retention for as long as it is live (purge extends it), so it cannot be destroyed even after its first retention ended', async (t) => {
    const bucket = await newBucket(true);
    const grace = 4;
    const b = await open(t, bucket, { graceSeconds: grace });
    t.equal(await b.refreshRetention(), 0, 'an empty store has nothing to extend');
    const data = randomBytes(2000);
    const written = Date.now();
    const n = await storeFile(b, 'acme', 'pack', data);
    const key = `tenants/acme/data/${n.slice(0, 2)}/${n}`;
    const retention = async () => (await admin.send(new GetObjectRetentionCommand({ Bucket: bucket, Key: key }))).Retention!;
    t.equal((await retention()).Mode, 'COMPLIANCE', 'written with a COMPLIANCE retention');
    t.equal(await b.refreshRetention(), 0, 'a refresh inside half the grace period of the last does nothing');
    await new Promise((r) => setTimeout(r, (grace / 2 + 0.5) * 1000));
    t.equal(await b.purge(new Date(Date.now() - grace * 1000)), 0, 'a purge (nothing to delete) ...');
    const until = (await retention()).RetainUntilDate!.getTime();
    t.ok(until >= Date.now() + (grace - 1) * 1000, `... extended the live file's retention to ${((until - written) / 1000).toFixed(1)} s after it was written`);
    await new Promise((r) => setTimeout(r, Math.max(0, written + (grace + 0.5) * 1000 - Date.now())));
    const [v] = (await admin.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: key }))).Versions ?? [];
    await t.rejects(admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, VersionId: v!.VersionId })), { name: 'AccessDenied' },
      'past its first retention the file still cannot be destroyed through the S3 API');
    t.same(await b.read('acme', 'pack', n, 0, data.length), data, 'and it is intact');
  });
}

