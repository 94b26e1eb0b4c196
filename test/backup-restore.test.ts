import fs from 'node:fs';
import path from 'node:path';

import t, { type Test } from 'tap';

import { backup } from '../appliance/backup/index.ts';
import { HoldfastError } from '../appliance/errors/index.ts';
import { check } from '../appliance/maintenance/index.ts';
import { Repository } from '../appliance/repository/index.ts';
import { restore } from '../appliance/restore/index.ts';
import { listSnapshots, locatePath } from '../appliance/snapshot/index.ts';
import { CHANGED_DURING_READ, LocalSource, type ReadBuffers, type ReadManyResult, type Source } from '../appliance/sources/index.ts';
import { LocalStorage, filePath } from '../appliance/storage/index.ts';
import { tmpDir } from './helpers/tmp.ts';
import { allocated, compareTrees, makeOddTree, pseudoRandom } from './helpers/tree.ts';

/** Small chunks so that modest files span many chunks. */
const SMALL_CHUNKS = { minSize: 16 << 10, avgSize: 64 << 10, maxSize: 256 << 10 };

async function newRepo(t: Test, dir: string, chunker = SMALL_CHUNKS): Promise<Repository> {
  const { repo } = await Repository.init(new LocalStorage(path.join(dir, 'repo')), 'pw', { chunker, packSize: 1 << 20 });
  t.teardown(() => repo.close());
  return repo;
}

t.test('round trip of an odd tree: bytes, structure, modes, owners, ns times, links, specials', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  await makeOddTree(src);
  const repo = await newRepo(t, dir);
  const r = await backup(repo, new LocalSource(), { paths: [src] });
  t.same(r.warnings, [], 'no warnings');
  t.ok(r.snapshot.stats.files > 30, `${r.snapshot.stats.files} files`);
  t.equal(r.snapshot.paths[0], src, 'path recorded as given, absolute');

  const target = path.join(dir, 'out');
  const res = await restore(repo, r.snapshot, { target });
  t.same(res.warnings, [], 'restore without warnings');
  t.equal(res.stats.failed, 0);
  t.equal(res.stats.hardlinks, 2, 'two extra names of one file restored as hard links');
  const restored = path.join(target, src); // /t/<abs src>
  t.same(compareTrees(src, restored), [], 'restored tree is identical');

  const sparse = path.join(restored, 'data', 'sparse.img');
  t.equal(fs.statSync(sparse).size, 24 * 1024 * 1024 + 4096, 'sparse file keeps its size');
  t.ok(allocated(sparse) < 4 * 1024 * 1024, `sparse file restored with holes (${allocated(sparse)} bytes allocated)`);
  t.ok(allocated(path.join(restored, 'data', 'zeros.bin')) < 1024 * 1024, 'all-zero file restored as a hole');

  const c = await check(repo, { readData: { fraction: 1 } });
  t.ok(c.ok, 'check --read-data passes');
  t.same(c.problems, []);
});

t.test('incremental: unchanged files are not read; changed ones are; only new chunks are stored', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(src, `f${i}`), pseudoRandom(`f${i}`, 20_000 + i));
  fs.writeFileSync(path.join(src, 'big'), pseudoRandom('big', 2 << 20));
  const repo = await newRepo(t, dir);
  const first = await backup(repo, new LocalSource(), { paths: [src] });
  t.equal(first.snapshot.stats.filesRead, 51);

  const second = await backup(repo, new LocalSource(), { paths: [src] });
  t.equal(second.snapshot.stats.bytesRead, 0, 'no file contents read');
  t.equal(second.snapshot.stats.filesUnchanged, 51);
  t.equal(second.snapshot.stats.blobsAdded, 0, 'nothing stored');
  t.equal(second.snapshot.tree, first.snapshot.tree, 'the same root tree');
  t.equal(second.snapshot.parent, first.id, 'parent recorded');

  // change one byte in the middle of the big file, and one small file
  const fd = fs.openSync(path.join(src, 'big'), 'r+');
  fs.writeSync(fd, Buffer.from([0x42]), 0, 1, 1 << 20);
  fs.closeSync(fd);
  fs.writeFileSync(path.join(src, 'f7'), 'changed');
  const third = await backup(repo, new LocalSource(), { paths: [src] });
  t.equal(third.snapshot.stats.filesRead, 2, 'only the two changed files read');
  t.equal(third.snapshot.stats.bytesRead, (2 << 20) + 7);
  t.ok(third.snapshot.stats.rawAdded < 600_000, `only the changed chunks stored (${third.snapshot.stats.rawAdded} bytes)`);

  const forced = await backup(repo, new LocalSource(), { paths: [src], force: true });
  t.equal(forced.snapshot.stats.filesRead, 51, '--force reads everything');
  t.equal(forced.snapshot.stats.blobsAdded, 0, 'but stores nothing new');
  t.equal(forced.snapshot.tree, third.snapshot.tree, 'and makes the same tree as the incremental backup');

  // Changes at the start, in the middle and at the end of a listing (the
  // parent's equal nodes are matched until the first difference): the
  // incremental tree is the one a backup without a parent makes.
  fs.rmSync(path.join(src, 'big'));
  fs.writeFileSync(path.join(src, 'a-new-first'), 'first');
  fs.writeFileSync(path.join(src, 'f3'), 'changed too');
  fs.writeFileSync(path.join(src, 'zz-new-last'), 'last');
  const fourth = await backup(repo, new LocalSource(), { paths: [src] });
  t.equal(fourth.snapshot.stats.filesRead, 3, 'the new and changed files read');
  const fresh = await backup(repo, new LocalSource(), { paths: [src], parent: null });
  t.equal(fourth.snapshot.tree, fresh.snapshot.tree, 'the incremental tree equals a fresh one');
  fs.rmSync(path.join(src, 'zz-new-last'));
  const fifth = await backup(repo, new LocalSource(), { paths: [src] });
  t.equal(fifth.snapshot.stats.filesRead, 0, 'a deleted last file: nothing read');
  t.not(fifth.snapshot.tree, fourth.snapshot.tree, 'but the tree changed');
  t.equal(fifth.snapshot.tree, (await backup(repo, new LocalSource(), { paths: [src], parent: null })).snapshot.tree, 'to the canonical one');
});

t.test('a damaged tree: the next backup reads that directory again with a warning, its siblings stay unread; restore loses only that directory', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  // Enough sibling directories that the walk fetches them ahead, in batches.
  for (let i = 0; i < 40; i++) {
    fs.mkdirSync(path.join(src, `d${String(i).padStart(2, '0')}`, 'inner'), { recursive: true });
    fs.writeFileSync(path.join(src, `d${String(i).padStart(2, '0')}`, 'inner', 'f'), pseudoRandom(`tree ${i}`, 3000 + i));
  }
  const repo = await newRepo(t, dir);
  const first = await backup(repo, new LocalSource(), { paths: [src] });
  const victim = path.join(src, 'd17', 'inner');
  const located = await locatePath(repo, first.snapshot.tree, victim);
  const loc = repo.index.get(located.tree!)!;
  const packFile = filePath(path.join(dir, 'repo'), 'pack', loc.pack);
  const fd = fs.openSync(packFile, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, loc.offset + loc.length - 20);
  b[0]! ^= 0x40;
  fs.writeSync(fd, b, 0, 1, loc.offset + loc.length - 20);
  fs.closeSync(fd);

  const second = await backup(repo, new LocalSource(), { paths: [src] });
  t.same(second.warnings.map((w) => [w.path, w.code, /parent snapshot's tree unreadable/.test(w.message)]), [[victim, 'HF_WARN_SOURCE', true]],
    'one warning, for the directory whose parent tree is damaged');
  t.equal(second.snapshot.stats.filesRead, 1, 'its file is read again');
  t.equal(second.snapshot.stats.filesUnchanged, 39, 'every other file is taken from the parent unread');
  // Its new listing is the same blob as the damaged one (content-addressed),
  // so until the directory changes, later snapshots share the damage: restore
  // says so for that directory, and restores everything else.
  const target = path.join(dir, 'out');
  const res = await restore(repo, second.snapshot, { target });
  t.same(res.warnings.map((w) => [w.code, w.path]), [['HF_WARN_DAMAGED', victim]], 'restore: one warning, naming the directory');
  t.equal(res.stats.failed, 1);
  const others = fs.readdirSync(src).filter((d) => d !== 'd17');
  t.same(others.flatMap((d) => compareTrees(path.join(src, d), path.join(target, src, d))), [], 'every other directory restores identical');
  t.same(fs.readdirSync(path.join(target, victim)), [], 'the damaged directory is there, empty');
});

t.test('a source that lists out of order (against its contract) still gives the canonical tree', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  await makeOddTree(src);
  const repo = await newRepo(t, dir);
  const inOrder = await backup(repo, new LocalSource(), { paths: [src], parent: null });
  const local = new LocalSource();
  const reversed: Source = {
    kind: local.kind, location: local.location,
    stat: (p) => local.stat(p),
    list: async (d) => {
      const l = await local.list(d);
      return { ...l, entries: [...l.entries].reverse() };
    },
    read: (p, size, buffers) => local.read(p, size, buffers),
    readMany: (paths, sizes, into) => local.readMany(paths, sizes, into),
    close: () => local.close(),
  };
  const out = await backup(repo, reversed, { paths: [src], parent: null });
  t.equal(out.snapshot.tree, inOrder.snapshot.tree, 'the same root tree, byte for byte');
  t.same(out.warnings, []);
});

t.test('restore of a subtree, and over an existing target with a symlink planted in it', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  await makeOddTree(src);
  const repo = await newRepo(t, dir);
  const r = await backup(repo, new LocalSource(), { paths: [src] });
  const target = path.join(dir, 'out');
  const sub = path.join(src, 'hard');
  const res = await restore(repo, r.snapshot, { target, include: [sub] });
  t.equal(res.stats.failed, 0);
  t.same(compareTrees(sub, path.join(target, sub)), [], 'subtree identical');
  t.notOk(fs.existsSync(path.join(target, src, 'data')), 'nothing outside the subtree');

  // An attacker (or an old restore) left a symlink where a directory and a file go.
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(outside);
  const planted = path.join(target, src, 'data');
  fs.symlinkSync(outside, planted);
  fs.rmSync(path.join(target, sub, 'third-name'));
  fs.symlinkSync(path.join(outside, 'victim'), path.join(target, sub, 'third-name'));
  const again = await restore(repo, r.snapshot, { target });
  t.equal(again.stats.failed, 0);
  t.same(fs.readdirSync(outside), [], 'nothing was written through the planted symlinks');
  t.ok(fs.lstatSync(planted).isDirectory(), 'the symlink was replaced by the directory');
  t.same(compareTrees(src, path.join(target, src)), [], 'full restore over the old one is identical');

  // Where symlinks go: a regular file (replaced) and a directory (kept, and said).
  const links = path.join(target, src, 'links');
  fs.rmSync(path.join(links, 'relative'));
  fs.writeFileSync(path.join(links, 'relative'), 'old file');
  fs.rmSync(path.join(links, 'dangling'));
  fs.mkdirSync(path.join(links, 'dangling'));
  fs.writeFileSync(path.join(links, 'dangling', 'keep'), 'mine');
  const third = await restore(repo, r.snapshot, { target });
  t.equal(fs.readlinkSync(path.join(links, 'relative')), '../data/small.bin', 'a file where a symlink goes is replaced by the link');
  t.same(third.warnings.map((w) => [w.code, w.path.endsWith('links/dangling'), /a directory is in the way/.test(w.message)]),
    [['HF_WARN_WRITE', true, true]], 'a directory where a symlink goes: one warning that names it and says why');
  t.equal(fs.readFileSync(path.join(links, 'dangling', 'keep'), 'utf8'), 'mine', 'the directory in the way is left as it was');
  t.equal(third.stats.symlinks, again.stats.symlinks - 1, 'every other symlink is restored');
});

t.test('snapshots of several paths share one root, each under its full path', async (t) => {
  const dir = tmpDir(t);
  const a = path.join(dir, 'a');
  const b = path.join(dir, 'b', 'deeper');
  fs.mkdirSync(a);
  fs.mkdirSync(b, { recursive: true });
  fs.writeFileSync(path.join(a, 'x'), 'x');
  fs.writeFileSync(path.join(b, 'y'), 'y');
  fs.writeFileSync(path.join(dir, 'single-file'), 'z');
  const repo = await newRepo(t, dir);
  const r = await backup(repo, new LocalSource(), { paths: [b, a, path.join(dir, 'single-file')] });
  t.same(r.snapshot.paths, [a, b, path.join(dir, 'single-file')].sort());
  const target = path.join(dir, 'out');
  await restore(repo, r.snapshot, { target });
  t.equal(fs.readFileSync(path.join(target, a, 'x'), 'utf8'), 'x');
  t.equal(fs.readFileSync(path.join(target, b, 'y'), 'utf8'), 'y');
  t.equal(fs.readFileSync(path.join(target, dir, 'single-file'), 'utf8'), 'z');
  t.same(fs.readdirSync(path.join(target, dir)).sort(), ['a', 'b', 'single-file'], 'only the chosen entries of the parent');
  const { snapshots } = await listSnapshots(repo);
  t.equal(snapshots.length, 1);
});

/** Content of the busy file's version n: larger than a chunk's minimum, so it is streamed, not batched. */
const busy = (n: number) => `version ${n}\n${'x'.repeat(40_000)}`;

/**
 * A local source that, like the SMB and SFTP sources, reports a file changed
 * while it was read (CHANGED_DURING_READ after the last byte): for the
 * first `times` reads of `victim`, each read also rewrites the file.
 */
class ChangingSource extends LocalSource {
  reads = 0;
  readonly victim: string;
  readonly times: number;

  constructor(victim: string, times: number) {
    super();
    this.victim = victim;
    this.times = times;
  }

  override async *read(p: Buffer, sizeHint: number, buffers?: ReadBuffers): AsyncIterable<Buffer> {
    yield* super.read(p, sizeHint, buffers);
    if (p.toString() !== this.victim) return;
    this.reads++;
    if (this.reads <= this.times) {
      fs.writeFileSync(this.victim, busy(this.reads + 1));
      throw Object.assign(new Error('changed while read'), { code: CHANGED_DURING_READ });
    }
  }
}

t.test('a file that changes while it is read is read again; if it changes again, it is kept with a warning', async (t) => {
  const dir = tmpDir(t);
  const repo = await newRepo(t, dir);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  const victim = path.join(src, 'busy.log');
  fs.writeFileSync(victim, busy(1));
  fs.writeFileSync(path.join(src, 'quiet.txt'), 'quiet');

  const once = new ChangingSource(victim, 1);
  const r1 = await backup(repo, once, { paths: [src], force: true });
  t.equal(once.reads, 2, 'read twice');
  t.same(r1.warnings, [], 'the second read was consistent: no warning');
  await restore(repo, (await listSnapshots(repo)).snapshots.at(-1)!.snapshot, { target: path.join(dir, 'r1') });
  t.equal(fs.readFileSync(path.join(dir, 'r1', victim), 'utf8'), busy(2), 'what the second read saw is stored');

  const always = new ChangingSource(victim, 99);
  const r2 = await backup(repo, always, { paths: [src], force: true });
  t.equal(always.reads, 2, 'read twice, not more');
  t.same(r2.warnings.map((w) => [w.path, w.code]), [[victim, 'HF_WARN_CHANGED']], 'then kept, with a warning');
  t.match(r2.warnings[0]!.message, /changed while being read, twice/);
});

/**
 * LocalSource, but readMany leaves every file at the offset its listed size
 * gives it (the sum of the listed sizes before it), not back to back: the
 * archiver must take each file's bytes from the view its result gives.
 */
class ListedOffsetsSource extends LocalSource {
  override async readMany(paths: readonly Buffer[], sizes: readonly number[], into: Buffer): Promise<ReadManyResult[]> {
    let at = 0;
    return paths.map((p, i) => {
      const slot = into.subarray(at, at + sizes[i]!);
      at += sizes[i]!;
      try {
        const data = fs.readFileSync(p);
        if (data.length > slot.length) return { error: Object.assign(new Error('grew'), { code: 'EFBIG' }) };
        data.copy(slot);
        return { data: slot.subarray(0, data.length) };
      } catch (err) {
        return { error: err as Error & { code?: string } };
      }
    });
  }
}

t.test('a batch of small files whose bytes a source leaves at their listed offsets is stored byte-exact', async (t) => {
  const dir = tmpDir(t);
  const repo = await newRepo(t, dir);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 20; i++) {
    files.set(`f${String(i).padStart(2, '0')}`, pseudoRandom(`listed ${i}`, 300 + i * 211));
    fs.writeFileSync(path.join(src, `f${String(i).padStart(2, '0')}`), files.get(`f${String(i).padStart(2, '0')}`)!);
  }
  // Listed, then changed before the batch is read: one gone, one shorter.
  const source = new ListedOffsetsSource();
  const list = source.list.bind(source);
  source.list = async (d: Buffer) => {
    const l = await list(d);
    if (d.toString() === src) {
      fs.rmSync(path.join(src, 'f00'));
      fs.truncateSync(path.join(src, 'f01'), 10);
    }
    return l;
  };
  const r = await backup(repo, source, { paths: [src] });
  t.same(r.warnings.map((w) => `${path.basename(w.path)} ${w.code}`).sort(), ['f00 HF_WARN_VANISHED', 'f01 HF_WARN_CHANGED']);
  const target = path.join(dir, 'out');
  await restore(repo, r.snapshot, { target });
  t.same(fs.readFileSync(path.join(target, src, 'f01')), files.get('f01')!.subarray(0, 10), 'the shrunk file as read');
  const wrong = [...files.keys()].slice(2).filter((n) => !fs.readFileSync(path.join(target, src, n)).equals(files.get(n)!));
  t.same(wrong, [], 'every other file byte-exact');
});

t.test('a path to back up that cannot be examined: only a missing one is HF_SOURCE_NOT_FOUND; the source\'s own codes pass', async (t) => {
  const dir = tmpDir(t);
  const repo = await newRepo(t, dir);
  const failing = (err: Error) => {
    const s = new LocalSource();
    s.stat = async () => { throw err; };
    return s;
  };
  const errno = (code: string) => Object.assign(new Error(`${code}: on /data`), { code });
  for (const [err, code] of [
    [errno('ENOENT'), 'HF_SOURCE_NOT_FOUND'],
    [errno('ENOTDIR'), 'HF_SOURCE_NOT_FOUND'],
    [errno('EACCES'), 'HF_SOURCE_ACCESS_DENIED'],
    [errno('EIO'), 'HF_IO'],
    [new HoldfastError('HF_SOURCE_DISCONNECTED', 'the server went away'), 'HF_SOURCE_DISCONNECTED'],
    [new HoldfastError('HF_SOURCE_PROTOCOL', 'a malformed reply'), 'HF_SOURCE_PROTOCOL'],
  ] as const) {
    await t.rejects(backup(repo, failing(err), { paths: ['/data'] }), { code, message: /\/data|went away|malformed/ }, `${(err as { code: string }).code} → ${code}`);
  }
  t.same((await listSnapshots(repo)).snapshots, [], 'no snapshot');
});
