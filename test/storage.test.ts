import fs from 'node:fs';
import path from 'node:path';

import t, { type Test } from 'tap';

import { release } from '../native/index.ts';
import { FaultyStorage, LocalStorage, MemoryStorage, type Storage } from '../appliance/storage/index.ts';
import { tmpDir } from './helpers/tmp.ts';

const HEX = (c: string) => c.repeat(64);

/** One conformance suite for every Storage implementation. */
const implementations: [string, (t: Test) => Promise<Storage>][] = [
  ['LocalStorage', async (t) => {
    const s = new LocalStorage(path.join(tmpDir(t), 'repo'));
    await s.initialize();
    t.teardown(() => s.close());
    return s;
  }],
  ['MemoryStorage', async () => new MemoryStorage()],
  ['FaultyStorage (passing)', async () => new FaultyStorage(new MemoryStorage(), () => undefined)],
];

for (const [name, make] of implementations) {
  t.test(`${name} meets the Storage contract`, async (t) => {
    const s = await make(t);
    await s.save('pack', HEX('a'), [Buffer.from('hello '), Buffer.from('world')]);
    t.equal((await s.load('pack', HEX('a'))).toString(), 'hello world', 'parts are concatenated');
    t.equal((await s.load('pack', HEX('a'), 6, 5)).toString(), 'world', 'ranges');
    t.equal((await s.stat('pack', HEX('a'))).size, 11);
    t.same((await s.list('pack')).map((f) => f.name), [HEX('a')]);
    t.same(await s.list('index'), [], 'types are separate');
    await t.rejects(s.load('pack', HEX('b')), { code: 'HF_STORAGE_NOT_FOUND' });
    await t.rejects(s.stat('snapshot', HEX('b')), { code: 'HF_STORAGE_NOT_FOUND' });
    await t.rejects(s.load('pack', HEX('a'), 8, 10), { code: 'HF_IO' }, 'a range past the end');
    await s.save('lock', 'writer', [Buffer.from('1')], { exclusive: true });
    await t.rejects(s.save('lock', 'writer', [Buffer.from('2')], { exclusive: true }), { code: 'HF_STORAGE_EXISTS' });
    t.equal((await s.load('lock', 'writer')).toString(), '1', 'an exclusive save does not replace');
    await s.save('lock', 'writer', [Buffer.from('3')]);
    t.equal((await s.load('lock', 'writer')).toString(), '3', 'a plain save replaces');
    const w = await s.create('pack');
    await w.write([Buffer.from('streamed ')]);
    await w.write([Buffer.from('pack')]);
    t.same((await s.list('pack')).map((f) => f.name), [HEX('a')], 'nothing visible before commit');
    await w.commit(HEX('c'));
    t.equal((await s.load('pack', HEX('c'))).toString(), 'streamed pack');
    // A loaded buffer is the caller's alone: freeing it (large enough not to
    // come from Node's shared slab) leaves the storage and later loads intact.
    const big = Buffer.alloc(256 << 10, 0x5a);
    await s.save('pack', HEX('f'), [big]);
    for (const [offset, length] of [[undefined, undefined], [1000, 100 << 10]] as const) {
      const got = await s.load('pack', HEX('f'), offset, length);
      release(got);
      t.ok((got.buffer as ArrayBuffer).detached, 'the caller could free it');
    }
    t.ok((await s.load('pack', HEX('f'))).equals(big), 'a loaded buffer is the caller\'s: freed, the next load is intact');
    await s.remove('pack', HEX('f'));
    const aborted = await s.create('pack');
    await aborted.write([Buffer.from('x')]);
    await aborted.abort();
    t.equal((await s.list('pack')).length, 2, 'an aborted file never appears');
    await s.remove('pack', HEX('a'));
    await s.remove('pack', HEX('a'));
    t.pass('remove is idempotent');
    await t.rejects(s.save('pack', '../../etc/passwd', [Buffer.from('x')]), { code: 'HF_INVALID_ARGUMENT' }, 'names are validated');
    await t.rejects(s.save('index', 'NOT-HEX', [Buffer.from('x')]), { code: 'HF_INVALID_ARGUMENT' });
  });
}

t.test('LocalStorage: atomic files, fsync, no leftovers, full disk is HF_DISK_FULL', async (t) => {
  const dir = path.join(tmpDir(t), 'repo');
  const s = new LocalStorage(dir);
  await s.initialize();
  t.teardown(() => s.close());
  await t.rejects(new LocalStorage(dir).initialize(), { code: 'HF_REPO_EXISTS' }, 'refuses a non-empty directory');
  await s.save('pack', HEX('d'), [Buffer.alloc(1000, 7)]);
  t.ok(fs.existsSync(path.join(dir, 'data', 'dd', HEX('d'))), 'packs live in data/<2 hex>/');
  t.same(fs.readdirSync(path.join(dir, 'tmp')), [], 'no temporary files left');
  t.equal(fs.statSync(path.join(dir, 'data', 'dd', HEX('d'))).mode & 0o777, 0o600, 'files are private');
  // a storage whose disk fills up: the error is coded and nothing is half-written
  const full = new FaultyStorage(s, (op, type) =>
    op === 'save' && type === 'pack' ? Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }) : undefined);
  await t.rejects(full.save('pack', HEX('e'), [Buffer.alloc(10)]), { code: 'ENOSPC' });
  t.notOk(fs.existsSync(path.join(dir, 'data', 'ee', HEX('e'))));
});
