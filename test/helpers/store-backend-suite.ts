import { createHash, randomBytes } from 'node:crypto';

import type { Test } from 'tap';

import type { ReplicatedType } from '../../appliance/protocol/index.ts';
import type { StoreBackend } from '../../appliance/store/index.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export interface BackendUnderTest {
  backend: StoreBackend;
  /** A second front-end over the same storage. */
  twin(): Promise<StoreBackend>;
}

export interface SuiteOptions {
  /** Makes an empty store (closed by the caller's teardown). */
  make(t: Test): Promise<BackendUnderTest>;
  /**
   * The resume granularity: bytes written in whole units are what a closed
   * upload keeps (a directory keeps every byte: any size; S3 keeps whole
   * parts: the part size).
   */
  unit: number;
}

/** Stores a whole file in one upload; resolves with its name (the digest for content-addressed types). */
export async function storeFile(b: StoreBackend, tenant: string, type: ReplicatedType, bytes: Buffer, name = sha(bytes)): Promise<string> {
  const u = await b.openUpload(tenant, type, name, sha(bytes));
  await u.write([bytes], 0);
  await u.commit(bytes.length);
  await u.close();
  return name;
}

/**
 * The StoreBackend contract (appliance/store/store-backend.ts), for every
 * implementation: what the store session and its clients rely on.
 */
export function storeBackendSuite(t: Test, o: SuiteOptions): void {
  const U = o.unit;

  t.test('an upload written in order, closed and resumed twice, commits with the right digest and becomes visible', async (t) => {
    const { backend: b, twin } = await o.make(t);
    const data = randomBytes(3 * U + 1234);
    const name = sha(data);
    t.equal(await b.stat('acme', 'pack', name), null, 'not there before');
    t.equal(await b.partial('acme', 'pack', name, name), null, 'no upload before');

    const u1 = await b.openUpload('acme', 'pack', name, name);
    t.equal(u1.stored, 0, 'a new upload starts empty');
    // in pieces that overlap (a byte range written twice is harmless)
    await u1.write([data.subarray(0, U / 2)], 0);
    await u1.write([data.subarray(U / 4, U)], U / 4);
    await u1.close();
    t.equal(await b.partial('acme', 'pack', name, name), U, `the upload outlives its connection: ${U} bytes kept`);
    t.equal(await b.partial('acme', 'pack', name, sha(Buffer.from('other'))), null, 'an upload under another digest is another file');
    t.equal(await b.stat('acme', 'pack', name), null, 'an upload in progress is not visible');
    t.same((await b.list('acme', 'pack', undefined, 10)).files, [], 'nor listed');
    await t.rejects(b.read('acme', 'pack', name, 0, 10), { code: 'HF_STORE_NOT_FOUND' }, 'nor readable');

    const b2 = await twin();
    const u2 = await b2.openUpload('acme', 'pack', name, name);
    t.equal(u2.stored, U, 'another front-end resumes it: stored = the bytes so far');
    const r2 = await u2.resumeAt(U);
    t.equal(r2.at, U, 'and resumes at that offset');
    await u2.write([data.subarray(U, 2 * U)], U);
    await u2.close();
    const u3 = await b.openUpload('acme', 'pack', name, name);
    t.equal(u3.stored, 2 * U, 'and again after another connection');
    const r3 = await u3.resumeAt(2 * U);
    await r3.hasher.update([data.subarray(2 * U)]);
    t.equal(r3.hasher.digest().toString('hex'), name, 'the hasher it gives has hashed exactly the bytes before (plus the rest: the file\'s digest)');
    await u3.write([data.subarray(2 * U)], 2 * U);
    await u3.commit(data.length);
    await u3.close();

    t.equal(await b.stat('acme', 'pack', name), data.length, 'committed: stat gives the size');
    t.equal(await b2.stat('acme', 'pack', name), data.length, 'on every front-end');
    t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'read gives the bytes');
    t.same(await b.read('acme', 'pack', name, U + 17, 1000), data.subarray(U + 17, U + 1017), 'and a range');
    const into = Buffer.alloc(500);
    t.equal(await b.read('acme', 'pack', name, 100, 500, into), into, 'into the caller\'s buffer when given');
    t.same(into, data.subarray(100, 600));
    t.same(await b.list('acme', 'pack', undefined, 10), { files: [{ name, size: data.length }], more: false }, 'listed');
    t.equal(await b.partial('acme', 'pack', name, name), null, 'the upload is gone');
    const usage = await b2.usage('acme');
    t.same(usage, { files: 1, bytes: data.length, partialBytes: 0, trashBytes: 0 }, 'usage counts the file');
    t.same(await b.tenants(), ['acme'], 'the tenant is known');

    // keys and config: the digest is given, not the name
    const key = Buffer.from('{"kdf":"…"}');
    await storeFile(b, 'acme', 'key', key, 'passphrase-1');
    await storeFile(b, 'acme', 'config', Buffer.from('cfg'), 'config');
    t.equal(await b.stat('acme', 'key', 'passphrase-1'), key.length, 'a key stored under its name');
    t.same(await b.read('acme', 'config', 'config', 0, 3), Buffer.from('cfg'), 'the config');
    t.same((await b.list('acme', 'config', undefined, 10)).files, [{ name: 'config', size: 3 }], 'the config is listed');
    t.same((await b.list('acme', 'key', undefined, 10)).files, [{ name: 'passphrase-1', size: key.length }], 'the key is listed');
    t.same((await b.list('acme', 'pack', undefined, 10)).files.map((f) => f.name), [name], 'keys and config are not listed as packs');

    // an empty file
    const empty = Buffer.alloc(0);
    const en = await storeFile(b, 'acme', 'index', empty);
    t.equal(await b.stat('acme', 'index', en), 0, 'an empty file is stored');
    t.same(await b.read('acme', 'index', en, 0, 0), empty, 'and read');

    // committing a file that is already there (another front-end stored it) resolves
    const again = await b2.openUpload('acme', 'pack', name, name);
    await again.write([data], 0);
    await again.commit(data.length);
    await again.close();
    t.equal(await b.stat('acme', 'pack', name), data.length, 'storing the same file again resolves and changes nothing');
    const cfg2 = await b.openUpload('acme', 'config', 'config', sha(Buffer.from('other config')));
    await cfg2.write([Buffer.from('other config')], 0);
    await t.rejects(cfg2.commit(12), { code: 'HF_STORE_EXISTS' }, 'a different config under the same name: HF_STORE_EXISTS');
    await cfg2.close();
    t.same(await b.read('acme', 'config', 'config', 0, 3), Buffer.from('cfg'), 'and the stored config is untouched');
  });

  t.test('a wrong digest is HF_STORE_DIGEST_MISMATCH and discards the upload; a wrong size is HF_STORE_BAD_OFFSET', async (t) => {
    const { backend: b } = await o.make(t);
    const data = randomBytes(2 * U + 10_000);
    const name = sha(data);
    const u = await b.openUpload('acme', 'pack', name, name);
    const bad = Buffer.from(data);
    bad[U + 5000] = bad[U + 5000]! ^ 1;
    await u.write([bad], 0);
    await t.rejects(u.commit(data.length), { code: 'HF_STORE_DIGEST_MISMATCH' }, 'one flipped bit: digest mismatch');
    await u.close();
    t.equal(await b.partial('acme', 'pack', name, name), null, 'the upload is gone (the next PUT starts at 0)');
    t.equal(await b.stat('acme', 'pack', name), null, 'nothing visible');

    const short = await b.openUpload('acme', 'pack', name, name);
    t.equal(short.stored, 0, 'a new upload starts at 0');
    await short.write([data.subarray(0, 2 * U)], 0);
    await t.rejects(short.commit(data.length), { code: 'HF_STORE_BAD_OFFSET' }, `${2 * U} of ${data.length} bytes: HF_STORE_BAD_OFFSET`);
    await short.close();
    t.equal(await b.partial('acme', 'pack', name, name), 2 * U, 'a short upload is kept for resume');
    const more = await b.openUpload('acme', 'pack', name, name);
    await more.write([data.subarray(2 * U)], 2 * U);
    await t.rejects(more.commit(data.length - 1), { code: 'HF_STORE_BAD_OFFSET' }, 'committing fewer bytes than stored: HF_STORE_BAD_OFFSET');
    await more.close();
    const last = await b.openUpload('acme', 'pack', name, name);
    t.ok(last.stored >= 2 * U && last.stored <= data.length, 'resumed from what was kept');
    await last.write([data.subarray(last.stored)], last.stored);
    await last.commit(data.length);
    await last.close();
    t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'then the right size commits');

    const gap = randomBytes(U + 10);
    const gu = await b.openUpload('acme', 'index', sha(gap), sha(gap));
    await gu.write([gap.subarray(0, 5)], 0);
    await t.rejects(gu.write([gap.subarray(10)], 10), { code: 'HF_STORE_BAD_OFFSET' }, 'a write past the end (a hole) is HF_STORE_BAD_OFFSET');
    await gu.discard();
    t.equal(await b.partial('acme', 'index', sha(gap), sha(gap)), null, 'discard drops the upload');

    const cfg = Buffer.from('config bytes');
    const cu = await b.openUpload('acme', 'config', 'config', sha(Buffer.from('something else')));
    await cu.write([cfg], 0);
    await t.rejects(cu.commit(cfg.length), { code: 'HF_STORE_DIGEST_MISMATCH' }, 'a config under a digest it does not have');
    await cu.close();
    t.equal(await b.stat('acme', 'config', 'config'), null);
  });

  t.test('remove moves to the trash; undelete puts back; purge deletes only older trash', async (t) => {
    const { backend: b, twin } = await o.make(t);
    const a = randomBytes(1000);
    const c = randomBytes(2000);
    const k = Buffer.from('key bytes');
    const na = await storeFile(b, 'acme', 'pack', a);
    const nc = await storeFile(b, 'acme', 'snapshot', c);
    await storeFile(b, 'acme', 'key', k, 'recovery-7');

    const old = new Date(Date.now() - 3_600_000);
    const recent = new Date();
    t.equal((await b.remove('acme', 'pack', na, old))?.getTime(), old.getTime(), 'remove resolves with the deletion time');
    t.equal((await b.remove('acme', 'snapshot', nc, recent))?.getTime(), recent.getTime());
    t.equal(await b.remove('acme', 'key', 'recovery-7', recent) !== null, true);
    t.equal(await b.remove('acme', 'pack', na, recent), null, 'removing a missing file resolves null');

    t.equal(await b.stat('acme', 'pack', na), null, 'gone from stat');
    t.same((await b.list('acme', 'pack', undefined, 10)).files, [], 'and from list');
    await t.rejects(b.read('acme', 'pack', na, 0, 1), { code: 'HF_STORE_NOT_FOUND' }, 'and from read');
    const b2 = await twin();
    const trash = await b2.trash('acme');
    t.same(trash.map((e) => [e.type, e.name, e.size, e.deletedAt.getTime()]).sort(),
      [['pack', na, 1000, old.getTime()], ['snapshot', nc, 2000, recent.getTime()], ['key', 'recovery-7', k.length, recent.getTime()]].sort(),
      'the trash (seen from another front-end) lists all three with type, name, size and deletion time');
    t.equal(trash[0]!.name, na, 'oldest first');
    t.equal((await b2.usage('acme')).trashBytes, 1000 + 2000 + k.length, 'usage counts the trash');

    t.equal(await b2.undelete('acme', (e) => e.type === 'key'), 1, 'undelete with a match restores only that');
    t.same(await b.read('acme', 'key', 'recovery-7', 0, k.length), k, 'the key is back, byte-identical');
    t.equal(await b.undelete('acme', (e) => e.name === na), 1, 'undelete the pack');
    t.same(await b.read('acme', 'pack', na, 0, a.length), a, 'the pack is back');
    t.same((await b.list('acme', 'pack', undefined, 10)).files, [{ name: na, size: 1000 }], 'and listed');
    t.same((await b.trash('acme')).map((e) => e.name), [nc], 'only the snapshot is left in the trash');

    // delete the pack again, long ago; the snapshot stays recent
    await b.remove('acme', 'pack', na, old);
    const pending = randomBytes(2 * U);
    const up = await b.openUpload('acme', 'pack', sha(pending), sha(pending));
    await up.write([pending.subarray(0, U)], 0);
    await up.close();
    t.equal(await b2.purge(new Date(Date.now() - 60_000)), 1, 'purge(before a minute ago) deletes only the hour-old pack');
    t.equal(await b.partial('acme', 'pack', sha(pending), sha(pending)), U, 'an upload in progress is kept');
    t.same((await b.trash('acme')).map((e) => e.name), [nc], 'the recent snapshot stays in the trash');
    t.equal(await b.undelete('acme', (e) => e.name === na), 0, 'the purged pack cannot be undeleted');
    t.equal(await b.stat('acme', 'pack', na), null);
    t.equal(await b.purge(new Date(recent.getTime() + 1)), 1, 'a later cut-off purges the snapshot');
    t.same(await b.trash('acme'), [], 'the trash is empty');
    t.equal(await b.undelete('acme'), 0, 'undelete with an empty trash');
  });

  t.test('tenants are isolated; invalid tenant names are refused', async (t) => {
    const { backend: b } = await o.make(t);
    const data = randomBytes(4096);
    const name = await storeFile(b, 'acme', 'pack', data);
    await storeFile(b, 'acme', 'key', Buffer.from('k'), 'passphrase-a');

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
    await storeFile(b, 'other', 'pack', data);
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
    const { backend: b } = await o.make(t);
    const names: string[] = [];
    for (let i = 0; i < 23; i++) names.push(await storeFile(b, 'acme', 'pack', randomBytes(10 + i)));
    names.sort();
    await storeFile(b, 'acme', 'index', randomBytes(5)); // another type is not listed with these
    const whole = await b.list('acme', 'pack', undefined, 5000);
    t.same(whole.files.map((f) => f.name), names, 'all 23 in name order (packs sit in data/xx/ subdirectories)');
    t.equal(whole.more, false);
    const seen: string[] = [];
    let after: string | undefined;
    let pages = 0;
    for (;;) {
      const page = await b.list('acme', 'pack', after, 5);
      pages++;
      seen.push(...page.files.map((f) => f.name));
      t.ok(page.files.length <= 5, `page ${pages}: at most 5`);
      if (!page.more) break;
      after = page.files.at(-1)!.name;
    }
    t.equal(pages, 5, '23 files in pages of 5: 5 pages');
    t.same(seen, names, 'the pages together are the list, without repeats');
    t.same(await b.list('acme', 'pack', names[21], 5), { files: [{ name: names[22]!, size: (await b.stat('acme', 'pack', names[22]!))! }], more: false }, 'after the second to last');
    t.same(await b.list('acme', 'pack', names[22], 5), { files: [], more: false }, 'after the last: empty');
    t.same((await b.list('acme', 'pack', '', 1)).files.map((f) => f.name), [names[0]], 'after "" is from the start');
    t.equal((await b.list('acme', 'pack', undefined, 23)).more, false, 'limit = count: no more');
    t.equal((await b.list('acme', 'pack', undefined, 22)).more, true, 'limit = count − 1: more');
    t.same(await b.list('acme', 'snapshot', undefined, 5), { files: [], more: false }, 'a type with nothing yet: empty');
    t.same(await b.list('nobody', 'pack', undefined, 5), { files: [], more: false }, 'a tenant with nothing yet: empty');
  });

  t.test('one upload owns its file: a second upload of it is HF_STORE_BUSY until the first ends, on any front-end', async (t) => {
    const { backend: b, twin } = await o.make(t);
    const b2 = await twin();
    const data = randomBytes(2 * U + 999);
    const name = sha(data);

    const u1 = await b.openUpload('acme', 'pack', name, name);
    await t.rejects(b2.openUpload('acme', 'pack', name, name), { code: 'HF_STORE_BUSY' }, 'a second upload of the same file is refused while the first is open');
    await t.rejects(b.openUpload('acme', 'pack', name, name), { code: 'HF_STORE_BUSY' }, 'also on the same front-end (two streams of one connection)');
    await u1.write([data.subarray(0, U)], 0);
    await u1.close();
    t.equal(await b2.partial('acme', 'pack', name, name), U, 'HAVE on the other front-end sees the upload and its length');
    const u2 = await b2.openUpload('acme', 'pack', name, name);
    t.equal(u2.stored, U, 'after the first ends, the next upload takes over its bytes');
    await u2.write([data.subarray(U)], U);
    await u2.commit(data.length, sha(data));
    await u2.close();
    t.same(await b.read('acme', 'pack', name, 0, data.length), data, 'the file is complete and byte-identical');
    t.equal(await b.partial('acme', 'pack', name, name), null, 'no upload left');
  });
}
