// One conformance suite for every Source: the same tree on disk, read through
// the local file system, a real Samba server and a real OpenSSH server, must
// give the same names, types, sizes, times (at each protocol's resolution) and
// bytes, and the same error codes for the same mistakes.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import t, { type Test } from 'tap';

import { backup } from '../appliance/backup/index.ts';
import { Repository } from '../appliance/repository/index.ts';
import { restore } from '../appliance/restore/index.ts';
import { type Listing, LocalSource, type ReadManyResult, type Source, type SourceStat } from '../appliance/sources/index.ts';
import { LocalStorage } from '../appliance/storage/index.ts';
import { SftpSource } from '../appliance/sources/sftp/index.ts';
import { SmbSource } from '../appliance/sources/smb/index.ts';
import { startSamba } from './helpers/samba.ts';
import { startSshd } from './helpers/sshd.ts';
import { tmpDir } from './helpers/tmp.ts';
import { pseudoRandom } from './helpers/tree.ts';

interface Served {
  source: Source;
  /** The tree on disk. */
  root: string;
  /** The tree's path in the source's namespace. */
  base: string;
  /** mtime resolution the protocol keeps, in ns. */
  resolutionNs: number;
  /** Whether symlinks are visible as symlinks (Samba without unix extensions follows them). */
  symlinks: boolean;
}

const NAMES = ['plain.txt', 'Caf\u00e9 nfc', 'Cafe\u0301 nfd', 'with space', '\u65e5\u672c', 'emoji \u{1f680}', 'empty'];

function fill(root: string): void {
  fs.mkdirSync(path.join(root, 'dir', 'sub'), { recursive: true });
  for (const [i, n] of NAMES.entries()) fs.writeFileSync(path.join(root, 'dir', n), n === 'empty' ? '' : `file ${i}: ${n}\n`);
  fs.writeFileSync(path.join(root, 'dir', 'sub', 'large.bin'), pseudoRandom('conformance', 5 * 1024 * 1024 + 17));
  fs.utimesSync(path.join(root, 'dir', 'plain.txt'), 1_600_000_000.25, 1_600_000_000.25);
}

const implementations: [string, (t: Test) => Promise<Served>][] = [
  ['local', async (t) => {
    const root = tmpDir(t);
    fill(root);
    return { source: new LocalSource(), root, base: root, resolutionNs: 1, symlinks: true };
  }],
  ['smb (Samba, signing mandatory)', async (t) => {
    const server = await startSamba(t, { profile: 'signing' });
    fill(server.root);
    const source = await SmbSource.connect({ host: server.host, port: server.port, user: server.user, password: server.password, share: server.share });
    t.teardown(() => source.close());
    return { source, root: server.root, base: '/', resolutionNs: 100, symlinks: false };
  }],
  ['sftp (OpenSSH)', async (t) => {
    const sshd = await startSshd(t);
    const root = tmpDir(t);
    fs.chmodSync(root, 0o755);
    fill(root);
    const source = await SftpSource.connect({
      host: sshd.host, port: sshd.port, user: sshd.user, identity: sshd.identityFile, knownHosts: sshd.knownHostsFile,
    });
    t.teardown(() => source.close());
    return { source, root, base: root, resolutionNs: 1e9, symlinks: true };
  }],
];

const at = (base: string, rel: string) => Buffer.from(path.posix.join(base, rel));

async function readAll(s: Source, p: Buffer, size: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const piece of s.read(p, size)) parts.push(Buffer.from(piece));
  return Buffer.concat(parts);
}

function sameTime(t: Test, got: SourceStat['mtime'], onDisk: bigint, resolutionNs: number, what: string): void {
  const ns = BigInt(got[0]) * 1_000_000_000n + BigInt(got[1]);
  const r = BigInt(resolutionNs);
  t.equal(ns / r, onDisk / r, `${what}: mtime at ${resolutionNs} ns`);
}

for (const [name, make] of implementations) {
  t.test(`${name} meets the Source contract`, async (t) => {
    const s = await make(t);
    const dir = at(s.base, 'dir');

    const st = await s.source.stat(dir);
    t.equal(st.type, 'dir', 'stat of a directory');
    const fst = await s.source.stat(at(s.base, 'dir/plain.txt'));
    t.equal(fst.type, 'file');
    t.equal(fst.size, fs.statSync(path.join(s.root, 'dir', 'plain.txt')).size);
    sameTime(t, fst.mtime, fs.statSync(path.join(s.root, 'dir', 'plain.txt'), { bigint: true }).mtimeNs, s.resolutionNs, 'stat');

    const l = await s.source.list(dir);
    t.same(l.problems, [], 'no problems listing');
    const expected = [...NAMES, 'sub'].map((n) => Buffer.from(n)).sort(Buffer.compare);
    t.same(l.entries.map((e) => e.name.toString('hex')), expected.map((b) => b.toString('hex')),
      'names exactly as on disk (NFC and NFD apart), sorted by bytes, no . or ..');
    for (const e of l.entries) {
      const onDisk = fs.lstatSync(path.join(s.root, 'dir', e.name.toString()), { bigint: true });
      const n = e.name.toString();
      t.equal(e.type, onDisk.isDirectory() ? 'dir' : 'file', `${n}: type`);
      if (e.type === 'file') {
        t.equal(e.size, Number(onDisk.size), `${n}: size`);
        t.same(await readAll(s.source, at(s.base, `dir/${n}`), e.size), fs.readFileSync(path.join(s.root, 'dir', n)), `${n}: bytes`);
      }
      sameTime(t, e.mtime, onDisk.mtimeNs, s.resolutionNs, n);
    }

    const big = fs.readFileSync(path.join(s.root, 'dir', 'sub', 'large.bin'));
    const got = await readAll(s.source, at(s.base, 'dir/sub/large.bin'), big.length);
    t.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(big).digest('hex'), 'a 5 MiB file, byte for byte');
    // A wrong size hint (the file grew or shrank since listing) still reads the whole file.
    t.equal((await readAll(s.source, at(s.base, 'dir/sub/large.bin'), 10)).length, big.length, 'a short size hint reads it all');

    await t.rejects(s.source.stat(at(s.base, 'dir/missing')), { code: 'ENOENT' }, 'stat of a missing path: ENOENT');
    await t.rejects(s.source.list(at(s.base, 'missing-dir')), { code: 'ENOENT' }, 'list of a missing directory: ENOENT');
    await t.rejects(readAll(s.source, at(s.base, 'dir/missing'), 1), { code: 'ENOENT' }, 'read of a missing file: ENOENT');

    if (s.source.listMany) {
      const many = await s.source.listMany([dir, at(s.base, 'missing-dir'), at(s.base, 'dir/sub')]);
      t.equal(many.length, 3, 'listMany: one result per directory');
      t.same(many[0], l, 'listMany: a directory as list() gives it');
      t.match(many[1], { error: { code: 'ENOENT' } }, 'listMany: a missing directory fails alone, with the code list() rejects with');
      t.same(many[2], await s.source.list(at(s.base, 'dir/sub')), 'listMany: and the next one is listed again');
    }

    if (s.symlinks) {
      fs.symlinkSync('plain.txt', path.join(s.root, 'dir', 'link'));
      const ll = await s.source.list(dir);
      const link = ll.entries.find((e) => e.name.toString() === 'link');
      t.equal(link?.type, 'symlink', 'a symlink is listed as one, not followed');
      t.equal(link?.target?.toString(), 'plain.txt', 'with its target');
      t.equal((await s.source.stat(at(s.base, 'dir/link'))).type, 'symlink', 'stat does not follow it either');
    }
  });
}

/**
 * A source that runs `mutate` once, right after it lists `dir`: files change
 * between the listing and the reading, as on a busy server.
 */
class ChangesAfterListing implements Source {
  readonly kind: string;
  readonly location: string;
  readonly readMany?: (paths: readonly Buffer[], sizes: readonly number[], into: Buffer) => Promise<ReadManyResult[]>;
  readonly #inner: Source;
  readonly #dir: Buffer;
  #mutate: (() => void) | null;

  constructor(inner: Source, dir: Buffer, mutate: () => void) {
    this.#inner = inner;
    this.kind = inner.kind;
    this.location = inner.location;
    this.#dir = dir;
    this.#mutate = mutate;
    if (inner.readMany) this.readMany = (paths, sizes, into) => inner.readMany!(paths, sizes, into);
  }

  stat(p: Buffer): Promise<SourceStat> {
    return this.#inner.stat(p);
  }

  async list(dir: Buffer): Promise<Listing> {
    const l = await this.#inner.list(dir);
    if (dir.equals(this.#dir) && this.#mutate) {
      this.#mutate();
      this.#mutate = null;
    }
    return l;
  }

  read(p: Buffer, sizeHint: number, buffers?: Parameters<Source['read']>[2]): AsyncIterable<Buffer> {
    return this.#inner.read(p, sizeHint, buffers);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}

for (const [name, make] of implementations) {
  t.test(`${name}: files deleted or shrunk between listing and reading (one batch of small files): every other file is stored byte-exact`, async (t) => {
    const s = await make(t);
    const dirOnDisk = path.join(s.root, 'batch');
    fs.mkdirSync(dirOnDisk);
    // Small files (one chunk each, so they are read in one batch where the
    // source can); the first two change after the listing.
    const files = new Map<string, Buffer>();
    for (let i = 0; i < 40; i++) {
      const n = `f${String(i).padStart(2, '0')}`;
      files.set(n, pseudoRandom(`batch ${i}`, 200 + ((i * 977) % 7000)));
      fs.writeFileSync(path.join(dirOnDisk, n), files.get(n)!);
    }
    const dir = at(s.base, 'batch');
    const source = new ChangesAfterListing(s.source, dir, () => {
      fs.rmSync(path.join(dirOnDisk, 'f00')); // vanished
      fs.truncateSync(path.join(dirOnDisk, 'f01'), 100); // shrunk
    });
    const repoDir = tmpDir(t, 'hf-conf-repo-');
    const { repo } = await Repository.init(new LocalStorage(repoDir), 'pw', { chunker: { minSize: 16 << 10, avgSize: 64 << 10, maxSize: 256 << 10 }, packSize: 1 << 20 });
    t.teardown(() => repo.close());
    const r = await backup(repo, source, { paths: [dir.toString()] });
    t.same(r.warnings.map((w) => `${path.posix.basename(w.path)} ${w.code}`).sort(), ['f00 HF_WARN_VANISHED', 'f01 HF_WARN_CHANGED'],
      'the deleted file and the shrunk one are warned about');
    const target = tmpDir(t, 'hf-conf-out-');
    const res = await restore(repo, r.snapshot, { target });
    t.equal(res.stats.failed, 0);
    const out = path.join(target, dir.toString());
    t.notOk(fs.existsSync(path.join(out, 'f00')), 'the deleted file is not in the snapshot');
    t.same(fs.readFileSync(path.join(out, 'f01')), files.get('f01')!.subarray(0, 100), 'the shrunk file is stored as read');
    const wrong = [...files.keys()].slice(2).filter((n) => !fs.readFileSync(path.join(out, n)).equals(files.get(n)!));
    t.same(wrong, [], 'every other file of the batch is byte-exact');
  });
}
