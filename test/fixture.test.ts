import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { check } from '../appliance/maintenance/index.ts';
import { Repository } from '../appliance/repository/index.ts';
import { restore } from '../appliance/restore/index.ts';
import { decodeTree, encodeTree, listSnapshots } from '../appliance/snapshot/index.ts';
import { LocalStorage } from '../appliance/storage/index.ts';
import { cli } from './helpers/cli.ts';
import { tmpDir } from './helpers/tmp.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

/**
 * A repository made by an earlier build (format version 1) and frozen:
 * every build must open it, list it, restore it exactly and check it clean.
 * If this fails, a format changed without a new version: see docs/DESIGN.md.
 */
t.test('the frozen version-1 repository opens, lists, restores and checks clean', async (t) => {
  const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'repo-v1.json'), 'utf8'));
  const dir = tmpDir(t);
  execFileSync('tar', ['-C', dir, '-xzf', path.join(FIXTURES, 'repo-v1.tar.gz')]);
  const location = path.join(dir, 'repo');

  const repo = await Repository.open(new LocalStorage(location), { password: manifest.password });
  t.teardown(() => repo.close());
  const byKey = await Repository.open(new LocalStorage(location), { recoveryKey: manifest.recoveryKey });
  t.teardown(() => byKey.close());
  t.equal(byKey.id, repo.id, 'the recovery key opens it too');

  const { snapshots, damaged } = await listSnapshots(repo);
  t.same(damaged, []);
  t.same(snapshots.map((s) => s.id), manifest.snapshots, 'the two snapshots, in order; the forgotten one is gone');
  t.same(snapshots[0]!.snapshot.tags, ['first']);

  const target = path.join(dir, 'latest');
  const r = await restore(repo, snapshots[1]!.snapshot, { target });
  t.same(r.warnings, []);
  const restored = path.join(target, manifest.sourcePath);
  for (const [rel, want] of Object.entries(manifest.files) as [string, { type: string; mode: number; mtime: string; sha256?: string; target?: string }][]) {
    const p = path.join(restored, rel);
    const st = fs.lstatSync(p, { bigint: true });
    const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file';
    t.equal(type, want.type, `${rel}: type`);
    if (type !== 'symlink') t.equal(Number(st.mode & 0o7777n), want.mode, `${rel}: mode`);
    if (type === 'file') {
      t.equal(String(st.mtimeNs), want.mtime, `${rel}: mtime`);
      t.equal(createHash('sha256').update(fs.readFileSync(p)).digest('hex'), want.sha256, `${rel}: content`);
    }
    if (type === 'symlink') t.equal(fs.readlinkSync(p), want.target, `${rel}: target`);
  }
  const old = path.join(dir, 'first');
  await restore(repo, snapshots[0]!.snapshot, { target: old, include: [path.join(manifest.sourcePath, 'hello.txt')] });
  t.equal(fs.readFileSync(path.join(old, manifest.sourcePath, 'hello.txt'), 'utf8'), 'hello, world\n', 'the older version restores');

  // The canonical tree encoding never changes: every tree of the frozen
  // repository re-encodes to its own bytes (else an unchanged directory would
  // get a new tree, and a new id, in every backup after an upgrade).
  const trees = [snapshots[1]!.snapshot.tree];
  for (let i = 0; i < trees.length; i++) {
    const bytes = await repo.loadBlob(trees[i]!);
    const nodes = decodeTree(bytes, 'fixture tree');
    t.ok(encodeTree(nodes).equals(bytes), `tree ${trees[i]!.slice(0, 8)} re-encodes to the same bytes`);
    for (const n of nodes) if (n.subtree) trees.push(n.subtree);
  }
  t.ok(trees.length >= 3, `${trees.length} trees compared`);

  const c = await check(repo, { readData: { fraction: 1 } });
  t.ok(c.ok, `check --read-data is clean: ${c.problems.map((p) => p.message).join('; ')}`);

  const env = { HOLDFAST_PASSWORD: manifest.password, HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const ls = await cli(['ls', '--repo', location, '--json', 'latest', path.join(manifest.sourcePath, 'docs')], env);
  t.equal(ls.code, 0);
  t.same(ls.json.entries.map((e: { name: string }) => e.name), ['deep', 'line\nbreak', 'r\u00e9sum\u00e9.txt'], 'the catalog lists it');
});
