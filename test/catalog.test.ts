// The catalog against a damaged repository: a snapshot whose tree cannot be
// read is left out (and named), every other snapshot is catalogued and
// browsable, and the next sync tries the damaged one again.
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { backup } from '../appliance/backup/index.ts';
import { Catalog } from '../appliance/catalog/index.ts';
import { Repository } from '../appliance/repository/index.ts';
import { LocalSource } from '../appliance/sources/index.ts';
import { LocalStorage, filePath } from '../appliance/storage/index.ts';
import { tmpDir } from './helpers/tmp.ts';

t.test('a snapshot with an unreadable tree is left out of the catalog; the others are catalogued', async (t) => {
  const dir = tmpDir(t);
  for (const s of ['good', 'bad']) {
    fs.mkdirSync(path.join(dir, s, 'folder'), { recursive: true });
    fs.writeFileSync(path.join(dir, s, 'folder', `${s}.txt`), `${s}\n`);
  }
  const location = path.join(dir, 'repo');
  const { repo } = await Repository.init(new LocalStorage(location), 'pw');
  t.teardown(() => repo.close());
  const good = await backup(repo, new LocalSource(), { paths: [path.join(dir, 'good')] });
  const bad = await backup(repo, new LocalSource(), { paths: [path.join(dir, 'bad')] });
  // flip a byte in the bad snapshot's root tree (no other snapshot shares it)
  const loc = repo.index.get(bad.snapshot.tree)!;
  const fd = fs.openSync(filePath(location, 'pack', loc.pack), 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, loc.offset + loc.length - 20);
  b[0]! ^= 0x40;
  fs.writeSync(fd, b, 0, 1, loc.offset + loc.length - 20);
  fs.closeSync(fd);

  const catalog = await Catalog.open(path.join(dir, 'cache'), repo.id);
  t.teardown(() => catalog.close());
  const first = await catalog.sync(repo);
  t.equal(first.added, 1, 'the good snapshot is catalogued');
  t.same(first.damaged.map((d) => d.id), [bad.id], 'the damaged one is named');
  t.match(first.damaged[0]!.error, /damaged/, 'with why');
  t.ok(await catalog.has(good.id));
  t.notOk(await catalog.has(bad.id));
  const page = await catalog.listPage(good.id, path.join(dir, 'good', 'folder'));
  t.same(page.entries.map((e) => e.name), ['good.txt'], 'and browsable');
  await t.rejects(catalog.listPage(bad.id, '/'), { code: 'HF_SNAPSHOT_NOT_FOUND', message: /holdfast check/ }, 'browsing the damaged one says what to do');
  const again = await catalog.sync(repo);
  t.same([again.added, again.damaged.map((d) => d.id)], [0, [bad.id]], 'the next sync tries it again, and keeps the rest');
});
