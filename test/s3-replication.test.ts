import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { CreateBucketCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, ListPartsCommand, S3Client } from '@aws-sdk/client-s3';
import t from 'tap';

import { StoreConnection } from '../appliance/replication/store-connection.ts';
import { cephInstalled, startCeph } from './helpers/ceph.ts';
import { cli, finish, startCli } from './helpers/cli.ts';
import { CountingProxy, makePki, startStore } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, pseudoRandom } from './helpers/tree.ts';

const MiB = 1 << 20;

if (!cephInstalled()) {
  t.fail('Ceph is not installed (ceph-mon, ceph-osd, radosgw): run scripts/setup.sh');
} else {
  const ceph = await startCeph(t, { memstoreBytes: 3 * 1024 * MiB });
  const admin = new S3Client({
    endpoint: ceph.endpoint, region: 'us-east-1', forcePathStyle: true,
    credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
  t.teardown(() => admin.destroy());
  const s3Env = { AWS_ACCESS_KEY_ID: ceph.accessKeyId, AWS_SECRET_ACCESS_KEY: ceph.secretAccessKey };
  const s3Args = (bucket: string, ...more: string[]) => ['--backend', 's3', '--s3-endpoint', ceph.endpoint, '--s3-bucket', bucket, '--s3-path-style', '--s3-claim-lease', '5s', ...more];

  const work = tmpDir(t, 'hf-s3-repl-');
  const env = { HOLDFAST_PASSWORD: 'correct horse', HOLDFAST_CACHE_DIR: path.join(work, 'cache') };
  const pki = await makePki(path.join(work, 'pki'), ['acme']);
  const acme = pki.cert('acme');
  const tlsFlags = ['--ca', pki.ca, '--cert', acme.cert, '--key', acme.key];
  const ok = async (args: string[]) => {
    const r = await cli(['--json', ...args], env);
    if (r.code !== 0) throw new Error(`holdfast ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r;
  };

  // A repository of 96 MiB of incompressible data and some text.
  const src = path.join(work, 'src');
  fs.mkdirSync(path.join(src, 'data'), { recursive: true });
  fs.writeFileSync(path.join(src, 'letter.txt'), 'HOLDFAST-S3-MARKER\n'.repeat(5000));
  for (let i = 0; i < 24; i++) fs.writeFileSync(path.join(src, 'data', `r${i}.bin`), pseudoRandom(`s3-${i}`, 4 * MiB));
  const repo = path.join(work, 'repo');
  await ok(['init', '--repo', repo]);
  await ok(['backup', '--repo', repo, src]);
  /** The repository's replicated files: relative path → SHA-256. */
  const repoFiles = () => {
    const out = new Map<string, string>();
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        const rel = path.relative(repo, p);
        if (/^(locks|tmp|replication)(\/|$)/.test(rel)) continue;
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) out.set(rel, createHash('sha256').update(fs.readFileSync(p)).digest('hex'));
      }
    };
    walk(repo);
    return out;
  };
  const want = repoFiles();
  const repoBytes = [...want.keys()].reduce((n, k) => n + fs.statSync(path.join(repo, k)).size, 0);
  /** The objects of a tenant in a bucket (outside partial/ and trash/): key relative to the tenant → SHA-256. */
  const bucketFiles = async (bucket: string, tenant = 'acme') => {
    const out = new Map<string, string>();
    const prefix = `tenants/${tenant}/`;
    let token: string | undefined;
    do {
      const r = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      for (const c of r.Contents ?? []) {
        const rel = c.Key!.slice(prefix.length);
        if (/^(partial|trash)\//.test(rel)) continue;
        const body = await admin.send(new GetObjectCommand({ Bucket: bucket, Key: c.Key! }));
        out.set(rel, createHash('sha256').update(await body.Body!.transformToByteArray()).digest('hex'));
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  };

  t.test('two front-ends over one bucket: the first is killed mid-transfer, replication completes through the second, and a clone restores byte-identical data', async (t) => {
    const bucket = 'hf-ha';
    await admin.send(new CreateBucketCommand({ Bucket: bucket }));
    const f1 = await startStore(t, { pki, backend: s3Args(bucket), env: s3Env, name: 'offsite' });
    const f2 = await startStore(t, { pki, backend: s3Args(bucket), env: s3Env, name: 'offsite' });
    t.match(f1.stderr(), /has no Object Lock: anyone with these credentials can destroy offsite copies/, 'a front-end on a bucket without Object Lock says so at start-up');
    const p1 = new CountingProxy(f1.port);
    const p2 = new CountingProxy(f2.port);
    await p1.listen();
    await p2.listen();
    t.teardown(() => Promise.all([p1.close(), p2.close()]));
    await ok(['target', 'add', '--repo', repo, 'ha', '--endpoint', `127.0.0.1:${p1.port},127.0.0.1:${p2.port}`, ...tlsFlags]);
    const child = startCli(['--json', 'replicate', '--repo', repo, '--target', 'ha'], env);
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    const done = finish(child);
    let killedAt = 0;
    while (killedAt === 0) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (p1.toServer >= repoBytes * 0.4) {
        killedAt = p1.toServer;
        await f1.kill();
      }
      if (child.exitCode !== null) break;
    }
    const r = await done;
    t.ok(killedAt > 0, `front-end 1 SIGKILLed after ${(killedAt / MiB).toFixed(1)} of ${(repoBytes / MiB).toFixed(1)} MiB`);
    t.equal(r.code, 0, `replicate finishes (stderr: ${r.stderr.slice(-600)})`);
    const res = r.json.targets[0].result as { endpoints: string[]; failovers: number };
    t.same(res.endpoints, [`127.0.0.1:${p1.port}`, `127.0.0.1:${p2.port}`], 'it moved from the first front-end to the second');
    t.ok(res.failovers >= 1, 'a failover counted');
    const got = await bucketFiles(bucket);
    t.same([...got.keys()].sort(), [...want.keys()].sort(), 'the bucket holds exactly the repository\'s files');
    t.same([...want].filter(([k, v]) => got.get(k) !== v).map(([k]) => k), [], 'every one byte-identical');
    t.notOk([...got.keys()].some((k) => k.includes('letter')), 'no file name of the source appears in the bucket');

    const clone = path.join(work, 'clone');
    const c = await ok(['clone', '--repo', clone, '--endpoint', `127.0.0.1:${f2.port}`, ...tlsFlags]);
    t.equal(c.json.snapshots, 1, 'the clone from the surviving front-end has the snapshot');
    await ok(['check', '--repo', clone, '--read-data']);
    const out = path.join(work, 'restored');
    await ok(['restore', '--repo', clone, 'latest', '--target', out]);
    t.same(compareTrees(src, path.join(out, src)), [], 'restored from the clone: identical to the source');
  });

  t.test('a multipart upload interrupted by killing the front-end is resumed by the next run without re-sending the parts already stored', async (t) => {
    const bucket = 'hf-resume';
    await admin.send(new CreateBucketCommand({ Bucket: bucket }));
    // 5 MiB parts and nothing in one PUT: every pack (about 16 MiB) is a multipart upload.
    const args = s3Args(bucket, '--s3-part-size', '5MiB', '--s3-single-put-max', '0');
    const f1 = await startStore(t, { pki, backend: args, env: s3Env });
    const p1 = new CountingProxy(f1.port);
    await p1.listen();
    t.teardown(() => p1.close());
    await ok(['target', 'add', '--repo', repo, 'resume', '--endpoint', `127.0.0.1:${p1.port}`, ...tlsFlags]);
    const child = startCli(['--json', 'replicate', '--repo', repo, '--target', 'resume'], env);
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    const done = finish(child);
    while (p1.toServer < repoBytes * 0.5 && child.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 5));
    await f1.kill();
    const first = await done;
    t.not(first.code, 0, 'the first run fails: its only front-end is gone');
    await new Promise((resolve) => setTimeout(resolve, 1000)); // parts whose bodies were all sent land in RGW
    // What S3 itself holds of the interrupted uploads: parts 1, 2, … without a gap, per upload.
    let inS3 = 0;
    const uploads = (await admin.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: 'tenants/acme/' }))).Uploads ?? [];
    for (const u of uploads) {
      const parts = (await admin.send(new ListPartsCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId! }))).Parts ?? [];
      const sizes = new Map(parts.map((p) => [p.PartNumber!, p.Size!]));
      for (let n = 1; sizes.has(n); n++) inS3 += sizes.get(n)!;
    }
    t.ok(uploads.length > 0 && inS3 > 0, `after the kill S3 holds ${(inS3 / MiB).toFixed(1)} MiB of parts of ${uploads.length} unfinished uploads`);

    // The next run, through a new front-end (the claims of the killed one lapse after 5 s).
    const f2 = await startStore(t, { pki, backend: args, env: s3Env });
    const p2 = new CountingProxy(f2.port);
    await p2.listen();
    t.teardown(() => p2.close());
    await ok(['target', 'remove', '--repo', repo, 'resume']);
    await ok(['target', 'add', '--repo', repo, 'resume2', '--endpoint', `127.0.0.1:${p2.port}`, ...tlsFlags]);
    const second = await ok(['replicate', '--repo', repo, '--target', 'resume2']);
    const res = second.json.targets[0].result as { resumed: number; sent: number };
    t.equal(res.resumed, inS3, `the second run resumed exactly the ${(inS3 / MiB).toFixed(1)} MiB of parts S3 held: none was sent again`);
    t.comment(`repository ${(repoBytes / MiB).toFixed(1)} MiB; first run ${(p1.toServer / MiB).toFixed(1)} MiB, second ${(p2.toServer / MiB).toFixed(1)} MiB on the wire`);
    t.ok(p2.toServer <= (repoBytes - res.resumed) * 1.05 + MiB, 'the second run sent no more than what the bucket lacked (5% framing and TLS allowed)');
    const got = await bucketFiles(bucket);
    t.same([...want].filter(([k, v]) => got.get(k) !== v).map(([k]) => k), [], 'the bucket holds every file, byte-identical');
  });

  t.test('a PUT of a pack the bucket already holds (no look first: the conditional PUT finds it) succeeds and leaves the object as it was; wrong bytes are refused', async (t) => {
    const bucket = `hf-repl-${process.pid}-again`;
    await admin.send(new CreateBucketCommand({ Bucket: bucket }));
    const store = await startStore(t, { pki, backend: s3Args(bucket), env: s3Env });
    const conn = await StoreConnection.connect({ host: '127.0.0.1', port: store.port }, { cert: fs.readFileSync(acme.cert), key: fs.readFileSync(acme.key), ca: fs.readFileSync(pki.ca) });
    t.teardown(() => conn.close());
    const data = pseudoRandom('s3-again', 3 * MiB + 17);
    const name = createHash('sha256').update(data).digest('hex');
    const file = { type: 'pack' as const, name, size: data.length, digest: name };
    const reader = (bytes: Buffer) => async (pos: number, into: Buffer) => { bytes.copy(into, 0, pos, pos + into.length); };
    await conn.put(file, 0, reader(data));
    const key = `tenants/acme/data/${name.slice(0, 2)}/${name}`;
    const first = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    await new Promise((r) => setTimeout(r, 1100)); // past a whole second of LastModified
    const again = await conn.put(file, 0, reader(data));
    t.equal(again.existed, false, 'the store did not look first: the bytes were sent');
    const second = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    t.same([second.LastModified, second.ETag], [first.LastModified, first.ETag], 'the second PUT succeeded and the object is the first one, untouched');
    const bad = Buffer.from(data);
    bad[1_000_000] = bad[1_000_000]! ^ 1;
    const badName = createHash('sha256').update(pseudoRandom('s3-other', 2 * MiB)).digest('hex');
    await t.rejects(conn.put({ type: 'pack', name: badName, size: bad.length, digest: badName }, 0, reader(bad)), { code: 'HF_STORE_DIGEST_MISMATCH' },
      'bytes that do not hash to the announced digest: HF_STORE_DIGEST_MISMATCH (the object store refused them)');
    await t.rejects(admin.send(new HeadObjectCommand({ Bucket: bucket, Key: `tenants/acme/data/${badName.slice(0, 2)}/${badName}` })), { name: 'NotFound' }, 'and nothing was stored under that name');
    await store.stop();
  });
}
