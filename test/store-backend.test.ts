import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import t, { type Test } from 'tap';

import type { ReplicatedType } from '../appliance/protocol/index.ts';
import { FsStoreBackend } from '../appliance/store/index.ts';
import { tmpDir } from './helpers/tmp.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function newBackend(t: Test): Promise<{ backend: FsStoreBackend; dir: string }> {
  const dir = path.join(tmpDir(t, 'hf-store-'), 'store');
  const backend = new FsStoreBackend(dir);
  await backend.initialize();
  t.teardown(() => backend.close());
  return { backend, dir };
}

/** Stores a whole file in one upload; resolves with its name (the digest for content-addressed types). */
async function store(b: FsStoreBackend, tenant: string, type: ReplicatedType, bytes: Buffer, name = sha(bytes)): Promise<string> {
  const u = await b.openUpload(tenant, type, name, sha(bytes));
  await u.write([bytes], 0);
  await u.commit(bytes.length);
  await u.close();
  return name;
}

/** Files under dir, relative, sorted. */
function files(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
}

t.test('an upload at offsets, closed and resumed, commits with the right digest and becomes visible', async (t) => {
  const { backend: b, dir } = await newBackend(t);
  const data = randomBytes(300_000);
  const name = sha(data);
  t.equal(await b.stat('acme', 'pack', name), null, 'not there before');
  t.equal(await b.partial('acme', 'pack', name, name), null, 'no upload before');

  const u1 = await b.openUpload('acme', 'pack', name, name);
  t.equal(u1.stored, 0, 'a new upload starts empty');
  // out of order and overlapping, as concurrent DATA frames may be written
  await Promise.all([u1.write([data.subarray(50_000, 100_000)], 50_000), u1.write([data.subarray(0, 60_000)], 0)]);
  await u1.close();
  t.equal(await b.partial('acme', 'pack', name, name), 100_000, 'the partial file outlives the upload: 100,000 bytes');
  t.equal(await b.partial('acme', 'pack', name, sha(Buffer.from('other'))), null, 'an upload under another digest is another file');
  t.equal(await b.stat('acme', 'pack', name), null, 'a partial file is not visible');
  t.same((await b.list('acme', 'pack', undefined, 10)).files, [], 'nor listed');
  await t.rejects(b.read('acme', 'pack', name, 0, 10), { code: 'HF_STORE_NOT_FOUND' }, 'nor readable');

  const u2 = await b.openUpload('acme', 'pack', name, name);
  t.equal(u2.stored, 100_000, 'resumed: stored = the bytes so far');
  await u2.write([data.subarray(100_000, 200_000)], 100_000);
  await u2.close();
  const u3 = await b.openUpload('acme', 'pack', name, name);
  t.equal(u3.stored, 200_000, 'and again after another connection');
  await u3.write([data.subarray(200_000)], 200_000);
  await u3.commit(data.length);
  await u3.close();

  t.equal(await b.stat('acme', 'pack', name), data.length, 'committed: stat gives the size');
  t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'read gives the bytes');
  t.same(await b.read('acme', 'pack', name, 123_456, 1000), data.subarray(123_456, 124_456), 'and a range');
  t.same(await b.list('acme', 'pack', undefined, 10), { files: [{ name, size: data.length }], more: false }, 'listed');
  t.equal(await b.partial('acme', 'pack', name, name), null, 'the partial file is gone');
  t.same(files(path.join(dir, 'tenants', 'acme', 'data')), [path.join(name.slice(0, 2), name)], 'stored as data/xx/<name>');
  t.same(files(path.join(dir, 'tenants', 'acme', 'partial')), [], 'nothing left in partial/');
  const usage = await b.usage('acme');
  t.same(usage, { files: 1, bytes: data.length, partialBytes: 0, trashBytes: 0 }, 'usage counts the file');
  t.same(await b.tenants(), ['acme'], 'the tenant is known');

  // keys and config: the digest is given, not the name
  const key = Buffer.from('{"kdf":"…"}');
  await store(b, 'acme', 'key', key, 'passphrase-1');
  await store(b, 'acme', 'config', Buffer.from('cfg'), 'config');
  t.equal(await b.stat('acme', 'key', 'passphrase-1'), key.length, 'a key stored under its name');
  t.same(await b.read('acme', 'config', 'config', 0, 3), Buffer.from('cfg'), 'the config');
});

t.test('a wrong digest is HF_STORE_DIGEST_MISMATCH and discards the partial file; a wrong size is HF_STORE_BAD_OFFSET', async (t) => {
  const { backend: b, dir } = await newBackend(t);
  const data = randomBytes(10_000);
  const name = sha(data);
  const u = await b.openUpload('acme', 'pack', name, name);
  const bad = Buffer.from(data);
  bad[5000] = bad[5000]! ^ 1;
  await u.write([bad], 0);
  await t.rejects(u.commit(data.length), { code: 'HF_STORE_DIGEST_MISMATCH' }, 'one flipped bit: digest mismatch');
  await u.close();
  t.equal(await b.partial('acme', 'pack', name, name), null, 'the partial file is gone (the next PUT starts at 0)');
  t.equal(await b.stat('acme', 'pack', name), null, 'nothing visible');
  t.same(files(path.join(dir, 'tenants', 'acme', 'partial')), [], 'partial/ is empty');

  const short = await b.openUpload('acme', 'pack', name, name);
  t.equal(short.stored, 0, 'a new upload starts at 0');
  await short.write([data.subarray(0, 9_000)], 0);
  await t.rejects(short.commit(data.length), { code: 'HF_STORE_BAD_OFFSET' }, '9,000 of 10,000 bytes: HF_STORE_BAD_OFFSET');
  await short.close();
  t.equal(await b.partial('acme', 'pack', name, name), 9_000, 'a short upload is kept for resume');
  const more = await b.openUpload('acme', 'pack', name, name);
  await more.write([data.subarray(9_000)], 9_000);
  await t.rejects(more.commit(data.length - 1), { code: 'HF_STORE_BAD_OFFSET' }, 'committing fewer bytes than stored: HF_STORE_BAD_OFFSET');
  await more.close();
  const last = await b.openUpload('acme', 'pack', name, name);
  t.equal(last.stored, data.length);
  await last.commit(data.length);
  await last.close();
  t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'then the right size commits');

  const cfg = Buffer.from('config bytes');
  const cu = await b.openUpload('acme', 'config', 'config', sha(Buffer.from('something else')));
  await cu.write([cfg], 0);
  await t.rejects(cu.commit(cfg.length), { code: 'HF_STORE_DIGEST_MISMATCH' }, 'a config under a digest it does not have');
  await cu.close();
  t.equal(await b.stat('acme', 'config', 'config'), null);
});

t.test('remove moves to the trash; undelete puts back; purge deletes only older trash', async (t) => {
  const { backend: b, dir } = await newBackend(t);
  const a = randomBytes(1000);
  const c = randomBytes(2000);
  const k = Buffer.from('key bytes');
  const na = await store(b, 'acme', 'pack', a);
  const nc = await store(b, 'acme', 'snapshot', c);
  await store(b, 'acme', 'key', k, 'recovery-7');

  const old = new Date(Date.now() - 3_600_000);
  const recent = new Date();
  t.equal((await b.remove('acme', 'pack', na, old))?.getTime(), old.getTime(), 'remove resolves with the deletion time');
  t.equal((await b.remove('acme', 'snapshot', nc, recent))?.getTime(), recent.getTime());
  t.equal(await b.remove('acme', 'key', 'recovery-7', recent) !== null, true);
  t.equal(await b.remove('acme', 'pack', na, recent), null, 'removing a missing file resolves null');

  t.equal(await b.stat('acme', 'pack', na), null, 'gone from stat');
  t.same((await b.list('acme', 'pack', undefined, 10)).files, [], 'and from list');
  await t.rejects(b.read('acme', 'pack', na, 0, 1), { code: 'HF_STORE_NOT_FOUND' }, 'and from read');
  const trash = await b.trash('acme');
  t.same(trash.map((e) => [e.type, e.name, e.size, e.deletedAt.getTime()]).sort(),
    [['pack', na, 1000, old.getTime()], ['snapshot', nc, 2000, recent.getTime()], ['key', 'recovery-7', k.length, recent.getTime()]].sort(),
    'the trash lists all three with type, name, size and deletion time');
  t.equal(trash[0]!.name, na, 'oldest first');
  t.equal(files(path.join(dir, 'tenants', 'acme', 'trash')).length, 3, 'the bytes are still on disk');
  t.equal((await b.usage('acme')).trashBytes, 1000 + 2000 + k.length, 'usage counts the trash');

  t.equal(await b.undelete('acme', (e) => e.type === 'key'), 1, 'undelete with a match restores only that');
  t.same(await b.read('acme', 'key', 'recovery-7', 0, k.length), k, 'the key is back, byte-identical');
  t.equal(await b.undelete('acme', (e) => e.name === na), 1, 'undelete the pack');
  t.same(await b.read('acme', 'pack', na, 0, a.length), a, 'the pack is back');
  t.same((await b.list('acme', 'pack', undefined, 10)).files, [{ name: na, size: 1000 }], 'and listed');

  // delete the pack again, long ago; the snapshot stays recent
  await b.remove('acme', 'pack', na, old);
  const pending = randomBytes(500);
  const up = await b.openUpload('acme', 'pack', sha(pending), sha(pending));
  await up.write([pending.subarray(0, 200)], 0);
  await up.close();
  t.equal(await b.purge(new Date(Date.now() - 60_000)), 1, 'purge(before a minute ago) deletes only the hour-old pack');
  t.equal(await b.partial('acme', 'pack', sha(pending), sha(pending)), 200, 'an upload in progress is kept');
  t.same((await b.trash('acme')).map((e) => e.name), [nc], 'the recent snapshot stays in the trash');
  t.equal(await b.undelete('acme', (e) => e.name === na), 0, 'the purged pack cannot be undeleted');
  t.equal(await b.stat('acme', 'pack', na), null);
  t.equal(await b.purge(new Date(recent.getTime() + 1)), 1, 'a later cut-off purges the snapshot');
  t.same(await b.trash('acme'), [], 'the trash is empty');
  t.same(files(path.join(dir, 'tenants', 'acme', 'trash')), [], 'and so is the trash directory');
  t.equal(await b.undelete('acme'), 0, 'undelete with an empty trash');
});

t.test('tenants are isolated; invalid tenant names are refused', async (t) => {
  const { backend: b } = await newBackend(t);
  const data = randomBytes(4096);
  const name = await store(b, 'acme', 'pack', data);
  await store(b, 'acme', 'key', Buffer.from('k'), 'passphrase-a');

  t.equal(await b.stat('other', 'pack', name), null, 'B cannot stat A\'s file');
  await t.rejects(b.read('other', 'pack', name, 0, 10), { code: 'HF_STORE_NOT_FOUND' }, 'nor read it');
  t.same(await b.list('other', 'pack', undefined, 100), { files: [], more: false }, 'nor list it');
  t.same(await b.list('other', 'key', undefined, 100), { files: [], more: false });
  t.equal(await b.partial('other', 'pack', name, name), null);
  t.equal(await b.remove('other', 'pack', name, new Date()), null, 'nor remove it (a miss for B)');
  t.same(await b.trash('other'), [], 'B\'s trash is empty');
  t.equal(await b.undelete('other'), 0);
  t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'A\'s file is intact');
  t.same(await b.usage('other'), { files: 0, bytes: 0, partialBytes: 0, trashBytes: 0 }, 'B uses nothing');

  // B uploading the same content stores its own copy; A's is untouched by B's delete
  await store(b, 'other', 'pack', data);
  await b.remove('other', 'pack', name, new Date());
  t.equal(await b.stat('acme', 'pack', name), data.length, 'B deleting its copy leaves A\'s');
  t.equal(await b.stat('other', 'pack', name), null);

  const h = sha(Buffer.from('x'));
  for (const bad of ['..', '.', 'A', 'Acme', 'a/b', '../acme', 'acme/../other', '', '-a', 'a'.repeat(64), 'a b', 'a\u0000']) {
    const what = JSON.stringify(bad);
    await t.rejects(b.stat(bad, 'pack', name), { code: 'HF_INVALID_ARGUMENT' }, `stat for tenant ${what}`);
    await t.rejects(b.read(bad, 'pack', name, 0, 1), { code: 'HF_INVALID_ARGUMENT' }, `read for tenant ${what}`);
    await t.rejects(b.list(bad, 'pack', undefined, 10), { code: 'HF_INVALID_ARGUMENT' }, `list for tenant ${what}`);
    await t.rejects(b.openUpload(bad, 'pack', h, h), { code: 'HF_INVALID_ARGUMENT' }, `openUpload for tenant ${what}`);
    await t.rejects(b.partial(bad, 'pack', h, h), { code: 'HF_INVALID_ARGUMENT' }, `partial for tenant ${what}`);
    await t.rejects(b.remove(bad, 'pack', name, new Date()), { code: 'HF_INVALID_ARGUMENT' }, `remove for tenant ${what}`);
    await t.rejects(b.trash(bad), { code: 'HF_INVALID_ARGUMENT' }, `trash for tenant ${what}`);
    await t.rejects(b.undelete(bad), { code: 'HF_INVALID_ARGUMENT' }, `undelete for tenant ${what}`);
    await t.rejects(b.usage(bad), { code: 'HF_INVALID_ARGUMENT' }, `usage for tenant ${what}`);
  }
  for (const [type, bad] of [['pack', '../' + name.slice(3)], ['pack', name.toUpperCase()], ['key', '../config'], ['key', 'a/b'], ['config', 'x']] as [ReplicatedType, string][]) {
    await t.rejects(b.stat('acme', type, bad), { code: 'HF_INVALID_ARGUMENT' }, `stat of ${type} ${JSON.stringify(bad)}`);
    await t.rejects(b.openUpload('acme', type, bad, h), { code: 'HF_INVALID_ARGUMENT' }, `openUpload of ${type} ${JSON.stringify(bad)}`);
    await t.rejects(b.remove('acme', type, bad, new Date()), { code: 'HF_INVALID_ARGUMENT' }, `remove of ${type} ${JSON.stringify(bad)}`);
  }
  await t.rejects(b.openUpload('acme', 'pack', h, 'zz'), { code: 'HF_INVALID_ARGUMENT' }, 'a digest that is not 64 hex');
  t.same(await b.tenants(), ['acme', 'other'], 'the refused names created nothing');
});

t.test('list pages with after and limit, in name order', async (t) => {
  const { backend: b } = await newBackend(t);
  const names: string[] = [];
  for (let i = 0; i < 23; i++) names.push(await store(b, 'acme', 'index', randomBytes(10 + i)));
  names.sort();
  await store(b, 'acme', 'pack', randomBytes(5)); // another type is not listed with these
  const whole = await b.list('acme', 'index', undefined, 5000);
  t.same(whole.files.map((f) => f.name), names, 'all 23 in name order');
  t.equal(whole.more, false);
  const seen: string[] = [];
  let after: string | undefined;
  let pages = 0;
  for (;;) {
    const page = await b.list('acme', 'index', after, 5);
    pages++;
    seen.push(...page.files.map((f) => f.name));
    t.ok(page.files.length <= 5, `page ${pages}: at most 5`);
    if (!page.more) break;
    after = page.files.at(-1)!.name;
  }
  t.equal(pages, 5, '23 files in pages of 5: 5 pages');
  t.same(seen, names, 'the pages together are the list, without repeats');
  t.same(await b.list('acme', 'index', names[21], 5), { files: [{ name: names[22]!, size: (await b.stat('acme', 'index', names[22]!))! }], more: false }, 'after the second to last');
  t.same(await b.list('acme', 'index', names[22], 5), { files: [], more: false }, 'after the last: empty');
  t.same((await b.list('acme', 'index', '', 1)).files.map((f) => f.name), [names[0]], 'after "" is from the start');
  t.equal((await b.list('acme', 'index', undefined, 23)).more, false, 'limit = count: no more');
  t.equal((await b.list('acme', 'index', undefined, 22)).more, true, 'limit = count − 1: more');
  t.same(await b.list('acme', 'snapshot', undefined, 5), { files: [], more: false }, 'a type with no directory yet: empty');
  t.same(await b.list('nobody', 'pack', undefined, 5), { files: [], more: false }, 'a tenant with no directory yet: empty');
});

t.test('one upload owns its partial file: a second upload of the same file is HF_STORE_BUSY until the first ends; a dead owner\'s file is taken over', async (t) => {
  const { backend: b, dir } = await newBackend(t);
  // two backends on one directory: two store front-ends
  const b2 = new FsStoreBackend(dir);
  t.teardown(() => b2.close());
  const data = randomBytes(1 << 20);
  const name = sha(data);

  const u1 = await b.openUpload('acme', 'pack', name, name);
  await t.rejects(b2.openUpload('acme', 'pack', name, name), { code: 'HF_STORE_BUSY' }, 'a second upload of the same file is refused while the first is open');
  await t.rejects(b.openUpload('acme', 'pack', name, name), { code: 'HF_STORE_BUSY' }, 'also on the same front-end (two streams of one connection)');
  await u1.write([data.subarray(0, 300_000)], 0);
  t.equal(await b2.partial('acme', 'pack', name, name), 300_000, 'HAVE sees the upload in progress and its length');
  await u1.close();
  const u2 = await b2.openUpload('acme', 'pack', name, name);
  t.equal(u2.stored, 300_000, 'after the first ends, the next upload takes over its bytes');
  await u2.write([data.subarray(300_000)], 300_000);
  await u2.commit(data.length, sha(data));
  await u2.close();
  t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'the file is complete and byte-identical');
  t.same(files(path.join(dir, 'tenants', 'acme', 'partial')), [], 'no partial file left');

  // An upload claimed by a process that died (a killed front-end) is taken over at once.
  const other = randomBytes(200_000);
  const on = sha(other);
  const partialDir = path.join(dir, 'tenants', 'acme', 'partial');
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  const host = os.hostname().replace(/[^A-Za-z0-9-]/g, '_').slice(0, 64) || 'host';
  fs.writeFileSync(path.join(partialDir, `pack-${on}-${on}.active.${host}.${dead.stdout}.0badf00d`), other.subarray(0, 120_000));
  t.equal(await b.partial('acme', 'pack', on, on), 120_000, 'HAVE reports the dead front-end\'s bytes');
  const u3 = await b.openUpload('acme', 'pack', on, on);
  t.equal(u3.stored, 120_000, 'and a new upload resumes from them');
  await u3.write([other.subarray(120_000)], 120_000);
  await u3.commit(other.length);
  await u3.close();
  t.same(await b2.read('acme', 'pack', on, 0, other.length), other, 'committed byte-identical');
  t.same(files(partialDir), [], 'and no partial file');

  // A live owner on this host is never taken over, however old its file.
  const third = randomBytes(10_000);
  const tn = sha(third);
  const live = path.join(partialDir, `pack-${tn}-${tn}.active.${host}.${process.pid}.0badf00d`);
  fs.writeFileSync(live, third.subarray(0, 5000));
  fs.utimesSync(live, new Date(0), new Date(0));
  await t.rejects(b.openUpload('acme', 'pack', tn, tn), { code: 'HF_STORE_BUSY' }, 'a live owner keeps its upload');
});
