import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import t, { type Test } from 'tap';

import { backup } from '../appliance/backup/index.ts';
import { check, forget, prune } from '../appliance/maintenance/index.ts';
import { type BlobId, BlobReader, BlobType, Lock, Repository, blobIdOf, formatRecoveryKey, parseRecoveryKey } from '../appliance/repository/index.ts';
import { locatePath } from '../appliance/snapshot/index.ts';
import { LocalSource } from '../appliance/sources/index.ts';
import { LocalStorage, filePath } from '../appliance/storage/index.ts';
import { duplicateBlobs } from './helpers/repo.ts';
import { tmpDir } from './helpers/tmp.ts';
import { isRoot, pseudoRandom } from './helpers/tree.ts';

async function init(t: Test, dir: string, options = {}): Promise<{ repo: Repository; recoveryKey: string; location: string }> {
  const location = path.join(dir, 'repo');
  const r = await Repository.init(new LocalStorage(location), 'correct horse', options);
  t.teardown(() => r.repo.close());
  return { ...r, location };
}

async function open(t: Test, location: string, creds: { password: string } | { recoveryKey: string }): Promise<Repository> {
  const repo = await Repository.open(new LocalStorage(location), creds);
  t.teardown(() => repo.close());
  return repo;
}

/** Every file's path and content digest: proves nothing changed. */
function fingerprint(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(d, e.name);
      h.update(p);
      if (e.isDirectory()) walk(p);
      else h.update(fs.readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex');
}

t.test('passphrase, wrong passphrase, recovery key, new passphrase', async (t) => {
  const dir = tmpDir(t);
  const { repo, recoveryKey, location } = await init(t, dir);
  t.match(recoveryKey, /^([0-9A-Z]{5}-){10}[0-9A-Z]{5}$/, 'printable recovery key: 11 groups of 5');
  const before = fingerprint(location);
  await t.rejects(Repository.open(new LocalStorage(location), { password: 'wrong' }), { code: 'HF_WRONG_PASSWORD' });
  t.equal(fingerprint(location), before, 'a wrong passphrase changes nothing');
  const byKey = await open(t, location, { recoveryKey: recoveryKey.toLowerCase().replaceAll('-', ' ') });
  t.equal(byKey.id, repo.id, 'the recovery key opens it (case and separators do not matter)');
  const typo = recoveryKey.slice(0, 3) + (recoveryKey[3] === 'A' ? 'B' : 'A') + recoveryKey.slice(4);
  await t.rejects(Repository.open(new LocalStorage(location), { recoveryKey: typo }), { code: 'HF_BAD_RECOVERY_KEY' }, 'a typo is caught');
  const other = formatRecoveryKey(Buffer.alloc(32, 9));
  await t.rejects(Repository.open(new LocalStorage(location), { recoveryKey: other }), { code: 'HF_BAD_RECOVERY_KEY' }, 'another key does not open it');
  t.same(parseRecoveryKey(other), Buffer.alloc(32, 9), 'format and parse round trip');
  await byKey.changePassphrase('battery staple');
  await t.rejects(Repository.open(new LocalStorage(location), { password: 'correct horse' }), { code: 'HF_WRONG_PASSWORD' });
  t.ok(await open(t, location, { password: 'battery staple' }), 'the new passphrase opens it');
  t.ok(await open(t, location, { recoveryKey }), 'the recovery key still does');
  await t.rejects(Repository.open(new LocalStorage(path.join(dir, 'nothing')), { password: 'x' }), { code: 'HF_REPO_NOT_FOUND' });
});

t.test('tampered or newer files are refused with codes', async (t) => {
  const dir = tmpDir(t);
  const { location } = await init(t, dir);
  const config = path.join(location, 'config');
  const good = fs.readFileSync(config);
  const flipped = Buffer.from(good);
  flipped[flipped.length - 5]! ^= 1;
  fs.writeFileSync(config, flipped);
  await t.rejects(Repository.open(new LocalStorage(location), { password: 'correct horse' }), { code: 'HF_REPO_CORRUPT' });
  const newer = Buffer.from(good);
  newer[7] = 9; // format version byte of the magic
  fs.writeFileSync(config, newer);
  await t.rejects(Repository.open(new LocalStorage(location), { password: 'correct horse' }), { code: 'HF_UNSUPPORTED_VERSION' });
  fs.writeFileSync(config, good);
  t.ok(await open(t, location, { password: 'correct horse' }));
});

t.test('locks: one writer, readers beside an appending writer, stale locks', async (t) => {
  const dir = tmpDir(t);
  const { repo } = await init(t, dir);
  const writer = await repo.lock('append', 'test writer');
  await t.rejects(repo.lock('append', 'second writer'), { code: 'HF_REPO_LOCKED', message: /test writer.*pid \d+/ });
  await t.rejects(repo.lock('exclusive', 'prune'), { code: 'HF_REPO_LOCKED' });
  const reader = await repo.lock('shared', 'reader');
  t.pass('a reader works beside an appending writer');
  await writer.release();
  await t.rejects(repo.lock('exclusive', 'prune'), { code: 'HF_REPO_LOCKED' }, 'prune waits for readers');
  await reader.release();
  const ex = await repo.lock('exclusive', 'prune');
  await t.rejects(repo.lock('shared', 'reader'), { code: 'HF_REPO_LOCKED' }, 'readers wait for prune');
  await ex.release();

  // a lock left by a process that is gone (same host, dead pid) is taken over
  const dead = { mode: 'append', host: os.hostname(), pid: 2 ** 22 + 17, pidStart: '1', user: 'x', command: 'crashed backup', time: new Date().toISOString() };
  await repo.storage.save('lock', 'writer', [Buffer.from(JSON.stringify(dead))]);
  const taken = await repo.lock('append', 'after crash');
  await taken.release();
  // another host's lock is stale only after 30 minutes without refresh
  const remote = { ...dead, host: 'elsewhere', time: new Date().toISOString() };
  await repo.storage.save('lock', 'writer', [Buffer.from(JSON.stringify(remote))]);
  await t.rejects(repo.lock('append', 'x'), { code: 'HF_REPO_LOCKED', message: /elsewhere/ });
  await repo.storage.save('lock', 'writer', [Buffer.from(JSON.stringify({ ...remote, time: new Date(Date.now() - 3_600_000).toISOString() }))]);
  await (await repo.lock('append', 'x')).release();
  t.same(await repo.storage.list('lock'), [], 'no lock files left');
  t.type(Lock, 'function');
});

t.test('packs, index checkpoints, and adoption of packs no index lists', async (t) => {
  const dir = tmpDir(t);
  const { repo, location } = await init(t, dir, { packSize: 1 << 20 });
  const w = repo.writer();
  const ids = [];
  for (let i = 0; i < 40; i++) ids.push((await w.saveBlob(BlobType.data, pseudoRandom(`b${i}`, 300_000), null)).id);
  t.equal((await w.saveBlob(BlobType.data, pseudoRandom('b0', 300_000), null)).added, false, 'a known blob is not stored twice');
  await w.flush();
  t.ok(w.stats.packsWritten >= 10, `${w.stats.packsWritten} packs`);
  t.ok(w.stats.indexFilesWritten >= 1);
  for (const id of ids) t.ok(repo.index.has(id));
  t.same((await repo.loadBlob(ids[3]!)).subarray(0, 16), pseudoRandom('b3', 16), 'a blob reads back');

  // lose the index (as after a crash between packs and index): a writer takes the packs in again
  for (const f of fs.readdirSync(path.join(location, 'index'))) fs.rmSync(path.join(location, 'index', f));
  const again = await open(t, location, { password: 'correct horse' });
  await again.loadIndex();
  t.equal(again.index.blobCount, 0, 'the index is gone');
  const lock = await again.lock('append', 'test');
  const adopted = await again.writer().adoptUnindexedPacks();
  await lock.release();
  t.equal(adopted.blobs, 40, 'every blob of the orphaned packs adopted');
  t.same(adopted.unreadable, []);
  const fresh = await open(t, location, { password: 'correct horse' });
  await fresh.loadIndex();
  t.equal(fresh.index.blobCount, 40, 'and written to a new index file');
  t.equal(blobIdOf(Buffer.from(ids[0]!, 'hex')), ids[0]);
});

t.test('a reader catches up with what another process wrote (refreshIndex, followWriters)', async (t) => {
  const dir = tmpDir(t);
  const { repo, location } = await init(t, dir, { packSize: 1 << 20 });
  await repo.loadIndex();
  // another process (the engine's job worker) writes to the same repository
  const other = await open(t, location, { password: 'correct horse' });
  const w = other.writer();
  const ids: BlobId[] = [];
  for (let i = 0; i < 8; i++) ids.push((await w.saveBlob(BlobType.data, pseudoRandom(`w${i}`, 300_000), null)).id);
  await w.flush();
  t.notOk(repo.index.has(ids[0]!), 'the reader\'s index does not know the new blobs');
  await t.rejects(repo.loadBlob(ids[0]!), { code: 'HF_BLOB_MISSING' }, 'and, not following writers, does not look for them');
  repo.followWriters = true;
  t.same((await repo.loadBlob(ids[0]!)).subarray(0, 16), pseudoRandom('w0', 16), 'following writers, a miss reads the new index files');
  t.ok(ids.every((id) => repo.index.has(id)), 'all of them');

  // the index files are replaced (as a prune does): the reader's index is read again, from the new files only
  const before = [...repo.index.indexFiles()].map(([f]) => f);
  for (const f of fs.readdirSync(path.join(location, 'index'))) fs.rmSync(path.join(location, 'index', f));
  const lock = await other.lock('append', 'test');
  const again = await open(t, location, { password: 'correct horse' });
  t.equal((await again.writer().adoptUnindexedPacks()).blobs, 8);
  await lock.release();
  await repo.refreshIndex();
  const after = [...repo.index.indexFiles()].map(([f]) => f);
  t.same(after.sort(), fs.readdirSync(path.join(location, 'index')).sort(), 'the index lists exactly the files now there');
  t.notOk(after.some((f) => before.includes(f)), 'none of the removed ones');
  t.ok(ids.every((id) => repo.index.has(id)), 'and still every blob');
});

t.test('a reader following writers reads a blob a prune in another process moved to a new pack', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'kept.bin'), pseudoRandom('kept', 200_000));
  fs.writeFileSync(path.join(src, 'dropped.bin'), pseudoRandom('dropped', 800_000));
  const { repo, location } = await init(t, dir);
  const first = await backup(repo, new LocalSource(), { paths: [src] });
  fs.rmSync(path.join(src, 'dropped.bin'));
  await backup(repo, new LocalSource(), { paths: [src] });
  const reader = await open(t, location, { password: 'correct horse' });
  reader.followWriters = true;
  await reader.loadIndex();
  const kept = (await locatePath(reader, first.snapshot.tree, path.join(src, 'kept.bin'))).node!.content![0]!;
  const before = reader.index.get(kept)!.pack;
  // another process forgets the first snapshot and prunes: the pack is repacked, the old one deleted
  const other = await open(t, location, { password: 'correct horse' });
  await forget(other, { snapshots: [first.id] });
  const pruned = await prune(other, { repackThreshold: 0.1 });
  t.ok(pruned.packsRepacked > 0, `${pruned.packsRepacked} pack(s) repacked`);
  t.notOk(fs.existsSync(filePath(location, 'pack', before)), 'the pack the reader knows is gone');
  t.same((await reader.loadBlob(kept)).subarray(0, 16), pseudoRandom('kept', 16), 'the reader finds the blob in its new pack');
  t.not(reader.index.get(kept)!.pack, before, 'and knows where it is now');
});

t.test('BlobReader: batches spanning more pack windows than it keeps read back exactly', async (t) => {
  const dir = tmpDir(t);
  const { repo } = await init(t, dir, { packSize: 1 << 20 });
  const w = repo.writer();
  const ids: BlobId[] = [];
  for (let i = 0; i < 60; i++) ids.push((await w.saveBlob(BlobType.data, pseudoRandom(`w${i}`, 150_000 + i), null)).id);
  await w.flush();
  const reader = new BlobReader(repo, { window: 256 << 10, keep: 2 });
  for (const order of [ids, [...ids].reverse(), ids.filter((_, i) => i % 3 === 0)]) {
    const { buffer, results } = await reader.loadMany(order);
    const bad = results.filter((r, k) => !('plain' in r) || !r.plain.equals(pseudoRandom(`w${ids.indexOf(order[k]!)}`, 150_000 + ids.indexOf(order[k]!))));
    t.equal(bad.length, 0, `${order.length} blobs across many windows, all exact`);
    reader.done(buffer);
  }
  const singles = await Promise.all(ids.slice(0, 20).map((id) => reader.load(id)));
  t.ok(singles.every((r, i) => r.plain.equals(pseudoRandom(`w${i}`, 150_000 + i))), 'concurrent single loads too');
  for (const r of singles) reader.done(r.plain);
});

t.test('a full disk fails the backup with HF_DISK_FULL and loses nothing', { skip: isRoot ? false : 'mounting a small tmpfs needs root' }, async (t) => {
  const dir = tmpDir(t);
  const mnt = path.join(dir, 'small-disk');
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', mnt]);
  t.teardown(() => execFileSync('umount', ['-l', mnt]));
  const location = path.join(mnt, 'repo');
  const { repo } = await Repository.init(new LocalStorage(location), 'pw', { packSize: 1 << 20 });
  t.teardown(() => repo.close());
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'small'), 'fits');
  const first = await backup(repo, new LocalSource(), { paths: [src] });
  // something else fills most of the disk
  fs.writeFileSync(path.join(mnt, 'ballast'), Buffer.alloc(7 << 20, 1));
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(src, `big-${i}`), pseudoRandom(`big${i}`, 1 << 20));
  const err = await backup(repo, new LocalSource(), { paths: [src] }).catch((e: unknown) => e);
  t.match(err, { code: 'HF_DISK_FULL', message: /disk is full.*Free space/ }, 'a coded error that says what to do');
  t.same(fs.readdirSync(path.join(location, 'locks')), [], 'the lock is released');
  const after = await Repository.open(new LocalStorage(location), { password: 'pw' });
  t.teardown(() => after.close());
  const c = await check(after, { readData: { fraction: 1 } });
  t.ok(c.ok, `the repository is still valid: ${c.problems.map((p) => p.message).join('; ')}`);
  const { listSnapshots } = await import('../appliance/snapshot/index.ts');
  t.same((await listSnapshots(after)).snapshots.map((s) => s.id), [first.id], 'no partial snapshot');
  fs.rmSync(path.join(mnt, 'ballast'));
  const done = await backup(after, new LocalSource(), { paths: [src] });
  t.equal(done.snapshot.stats.files, 9, 'with space again, the backup completes');
  t.same(await duplicateBlobs(after), [], 'what the failed run stored was reused, not stored again');
  t.ok((await check(after, { readData: { fraction: 1 } })).ok, 'and the repository checks clean');
});
