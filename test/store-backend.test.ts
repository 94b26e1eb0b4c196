import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import t, { type Test } from 'tap';

import type { ReplicatedType } from '../appliance/protocol/index.ts';
import { FsStoreBackend } from '../appliance/store/index.ts';
import { storeBackendSuite } from './helpers/store-backend-suite.ts';
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

storeBackendSuite(t, {
  unit: 100_000,
  make: async (t) => {
    const { backend, dir } = await newBackend(t);
    return {
      backend,
      twin: async () => {
        const b = new FsStoreBackend(dir);
        t.teardown(() => b.close());
        return b;
      },
    };
  },
});

t.test('a directory: files at the repository layout, nothing left behind, the trash on disk', async (t) => {
  const { backend: b, dir } = await newBackend(t);
  const data = randomBytes(300_000);
  const name = await store(b, 'acme', 'pack', data);
  t.same(files(path.join(dir, 'tenants', 'acme', 'data')), [path.join(name.slice(0, 2), name)], 'stored as data/xx/<name>');
  t.same(files(path.join(dir, 'tenants', 'acme', 'partial')), [], 'nothing left in partial/');
  const u = await b.openUpload('acme', 'index', sha(data), sha(data));
  await u.write([data.subarray(0, 1000)], 0);
  await u.close();
  t.same(files(path.join(dir, 'tenants', 'acme', 'partial')), [`index-${sha(data)}-${sha(data)}`], 'a closed upload is parked under partial/');
  await b.remove('acme', 'pack', name, new Date());
  t.equal(files(path.join(dir, 'tenants', 'acme', 'trash')).length, 1, 'a removed file\'s bytes are still on disk, in trash/');
  t.equal(await b.purge(new Date(Date.now() + 60_000)), 2, 'a purge with a later cut-off deletes the trashed file and the parked upload');
  t.same(files(path.join(dir, 'tenants', 'acme', 'trash')), [], 'and the trash directory is empty');
  t.same(files(path.join(dir, 'tenants', 'acme', 'partial')), [], 'and so is partial/');
});

t.test('a directory: an upload claimed by a front-end process that died is taken over at once; a live owner\'s never', async (t) => {
  const { backend: b, dir } = await newBackend(t);
  const b2 = new FsStoreBackend(dir);
  t.teardown(() => b2.close());
  fs.mkdirSync(path.join(dir, 'tenants', 'acme', 'partial'), { recursive: true });
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
