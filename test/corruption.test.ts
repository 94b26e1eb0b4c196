import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { type PackId, Repository, readPackHeader } from '../appliance/repository/index.ts';
import { decodeTree, displayName } from '../appliance/snapshot/index.ts';
import { LocalStorage } from '../appliance/storage/index.ts';
import { cli } from './helpers/cli.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, pseudoRandom } from './helpers/tree.ts';

/** Finds the pack holding a file's first chunk, and where in it. */
async function locateFile(repoDir: string, filePath: string): Promise<{ pack: PackId; offset: number; length: number }> {
  const repo = await Repository.open(new LocalStorage(repoDir), { password: 'pw' });
  try {
    await repo.loadIndex();
    const { listSnapshots } = await import('../appliance/snapshot/index.ts');
    let tree = (await listSnapshots(repo)).snapshots.at(-1)!.snapshot.tree;
    const parts = filePath.split('/').filter(Boolean);
    for (let i = 0; i < parts.length; i++) {
      const node = decodeTree(await repo.loadBlob(tree), 'tree').find((n) => displayName(n.name) === parts[i])!;
      if (i === parts.length - 1) {
        const loc = repo.index.get(node.content![0]!)!;
        return { pack: loc.pack, offset: loc.offset, length: loc.length };
      }
      tree = node.subtree!;
    }
    throw new Error('not found');
  } finally {
    await repo.close();
  }
}

t.test('a flipped byte in a pack: check names the pack and the files, the rest restores', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'docs'), { recursive: true });
  for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(src, 'docs', `doc-${i}.txt`), pseudoRandom(`d${i}`, 5000 + i));
  fs.writeFileSync(path.join(src, 'victim.bin'), pseudoRandom('victim', 300_000));
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repoDir = path.join(dir, 'repo');
  t.equal((await cli(['init', '--repo', repoDir], env)).code, 0);
  t.equal((await cli(['backup', '--repo', repoDir, src], env)).code, 0);
  t.equal((await cli(['backup', '--repo', repoDir, src], env)).code, 0, 'a second snapshot shares the data');
  t.equal((await cli(['check', '--repo', repoDir, '--read-data'], env)).code, 0, 'clean before');

  const victim = path.join(src, 'victim.bin');
  const where = await locateFile(repoDir, victim);
  const packFile = path.join(repoDir, 'data', where.pack.slice(0, 2), where.pack);
  const fd = fs.openSync(packFile, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, where.offset + Math.floor(where.length / 2));
  b[0]! ^= 0x10;
  fs.writeSync(fd, b, 0, 1, where.offset + Math.floor(where.length / 2));
  fs.closeSync(fd);

  const quick = await cli(['check', '--repo', repoDir], env);
  t.equal(quick.code, 0, 'a structural check cannot see inside blobs (it reads headers only)');
  const deep = await cli(['check', '--repo', repoDir, '--read-data', '--json'], env);
  t.not(deep.code, 0, 'check --read-data fails');
  t.ok(deep.json.damagedPacks.includes(where.pack), 'it names the damaged pack');
  t.equal(deep.json.affected.length, 2, 'both snapshots are affected');
  for (const a of deep.json.affected) t.same(a.paths, [victim], 'the affected file is named, and only it');
  const human = await cli(['check', '--repo', repoDir, '--read-data'], env);
  t.match(human.stdout, where.pack.slice(0, 8), 'the human report names the pack');
  t.match(human.stdout, victim, 'and the file');

  const target = path.join(dir, 'out');
  const r = await cli(['restore', '--repo', repoDir, 'latest', '--target', target, '--json'], env);
  t.equal(r.code, 3, 'restore finishes with warnings');
  t.equal(r.json.failed, 1, 'one file not restored');
  t.match(r.stderr, /victim\.bin.*damaged.*HF_WARN_DAMAGED/, 'the admin is told which and why');
  t.notOk(fs.existsSync(path.join(target, victim)), 'no partial file that passes for the original');
  fs.rmSync(victim);
  t.same(compareTrees(src, path.join(target, src)), [], 'every other file restores intact');

  // a damaged pack header: named too
  const size = fs.statSync(packFile).size;
  const fd2 = fs.openSync(packFile, 'r+');
  // flip the byte (writing a constant would change nothing 1 time in 256)
  const flip = Buffer.alloc(1);
  fs.readSync(fd2, flip, 0, 1, size - 20);
  flip[0] = flip[0]! ^ 0xff;
  fs.writeSync(fd2, flip, 0, 1, size - 20);
  fs.closeSync(fd2);
  const headers = await cli(['check', '--repo', repoDir, '--json'], env);
  t.not(headers.code, 0);
  t.ok(headers.json.problems.some((p: { id: string }) => p.id === where.pack), 'a damaged header is reported for its pack');
  const repo = await Repository.open(new LocalStorage(repoDir), { password: 'pw' });
  t.teardown(() => repo.close());
  await t.rejects(readPackHeader(repo.storage, repo.sealer, where.pack, size), { code: 'HF_PACK_CORRUPT' });
});

t.test('wrong passphrase and a second writer get coded errors and change nothing', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(src, `f${i}`), pseudoRandom(`f${i}`, 3 << 20));
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repoDir = path.join(dir, 'repo');
  await cli(['init', '--repo', repoDir], env);
  const listing = () => JSON.stringify(fs.readdirSync(repoDir, { recursive: true }).sort());
  const before = listing();
  const wrong = await cli(['backup', '--repo', repoDir, '--json', src], { ...env, HOLDFAST_PASSWORD: 'not it' });
  t.equal(wrong.code, 1);
  t.equal(wrong.json.error.code, 'HF_WRONG_PASSWORD');
  t.match(wrong.stderr, /HF_WRONG_PASSWORD.*recovery key/, 'the message says what to do');
  t.equal(listing(), before, 'nothing changed');

  // another writer (this process) holds the repository
  const holder = await Repository.open(new LocalStorage(repoDir), { password: 'pw' });
  t.teardown(() => holder.close());
  const lock = await holder.lock('append', 'holdfast backup (the first writer)');
  const locked = listing();
  const second = await cli(['backup', '--repo', repoDir, '--json', src], env);
  t.equal(second.code, 1);
  t.equal(second.json?.error?.code, 'HF_REPO_LOCKED', 'the second writer is refused');
  t.match(second.stderr, new RegExp(`locked.*the first writer.*pid ${process.pid}`), 'naming who holds the lock');
  t.equal(listing(), locked, 'nothing changed');
  await lock.release();
  t.equal((await cli(['backup', '--repo', repoDir, src], env)).code, 0, 'once released, the backup runs');
  t.equal((await cli(['check', '--repo', repoDir], env)).code, 0);
});

t.test('a damaged index file loses nothing: readers use pack headers, backup re-indexes, prune clears it', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(src, `f${i}`), pseudoRandom(`i${i}`, 30_000));
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repoDir = path.join(dir, 'repo');
  await cli(['init', '--repo', repoDir], env);
  t.equal((await cli(['backup', '--repo', repoDir, src], env)).code, 0);
  const [indexFile] = fs.readdirSync(path.join(repoDir, 'index'));
  const p = path.join(repoDir, 'index', indexFile!);
  const bytes = fs.readFileSync(p);
  bytes[bytes.length - 3]! ^= 0xff;
  fs.writeFileSync(p, bytes);

  const c = await cli(['check', '--repo', repoDir, '--json'], env);
  t.equal(c.code, 1, 'check reports the damaged index file');
  t.match(c.json.problems, [{ kind: 'index', id: indexFile }]);
  t.same(c.json.affected, [], 'and no snapshot lost anything');
  const target = path.join(dir, 'out');
  t.equal((await cli(['restore', '--repo', repoDir, 'latest', '--target', target], env)).code, 0, 'restore works from pack headers');
  t.same(compareTrees(src, path.join(target, src)), []);
  fs.writeFileSync(path.join(src, 'new'), 'new');
  const b = await cli(['backup', '--repo', repoDir, '--json', src], env);
  t.equal(b.code, 0, 'the next backup works');
  t.equal(b.json.filesRead, 1, 'and reuses everything else');
  t.equal((await cli(['prune', '--repo', repoDir], env)).code, 0);
  t.notOk(fs.existsSync(p), 'prune removed the damaged index file');
  t.equal((await cli(['check', '--repo', repoDir, '--read-data'], env)).code, 0, 'the repository checks clean again');
});
