import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { PROGRAM } from '../appliance/backup/index.ts';
import { type BlobId, BlobType, Repository } from '../appliance/repository/index.ts';
import { restore } from '../appliance/restore/index.ts';
import { type Snapshot, type TreeNode, encodeTree, saveSnapshot } from '../appliance/snapshot/index.ts';
import { LocalStorage } from '../appliance/storage/index.ts';
import { tmpDir } from './helpers/tmp.ts';

const now: [number, number] = [1_700_000_000, 0];

function node(name: string | Buffer, extra: Partial<TreeNode>): TreeNode {
  return {
    name: Buffer.isBuffer(name) ? name : Buffer.from(name), type: 'file', mode: 0o644, uid: 0, gid: 0,
    mtime: now, ctime: now, size: 0, inode: 0, device: 0, links: 1, content: [], ...extra,
  };
}

/**
 * A repository whose snapshot was crafted by an attacker (or damaged):
 * names that climb out, absolute names, names with slashes or NUL, an empty
 * name, duplicate names, and a symlink followed by a directory of the same
 * name. Restore must write nothing outside its target.
 */
t.test('hostile names in a snapshot are refused; nothing is written outside the target', async (t) => {
  const dir = tmpDir(t);
  const { repo } = await Repository.init(new LocalStorage(path.join(dir, 'repo')), 'pw');
  t.teardown(() => repo.close());
  const lock = await repo.lock('append', 'test');
  const w = repo.writer();
  const payload = (await w.saveBlob(BlobType.data, Buffer.from('payload\n'), null)).id;
  const file = (name: string | Buffer) => node(name, { size: 8, content: [payload] });
  const inner = (await w.saveBlob(BlobType.tree, encodeTree([file('deep-file')]), null)).id;
  const raw = (nodes: string) => w.saveBlob(BlobType.tree, Buffer.from(`{"nodes":[${nodes}]}`), null);
  // encodeTree refuses duplicates, so this listing is written by hand, as an attacker would
  const dup = (name: string, more: string) =>
    `{"name":${JSON.stringify(name)},"type":"file","mode":420,"uid":0,"gid":0,"mtime":[1,0],"ctime":[1,0],"size":8,"inode":0,"device":0,"links":1,"content":["${payload}"]${more}}`;
  const duplicates = (await raw([dup('same', ''), dup('same', '')].join(','))).id;
  const symlinkThenDir = (await raw([
    `{"name":"trap","type":"symlink","mode":511,"uid":0,"gid":0,"mtime":[1,0],"ctime":[1,0],"size":0,"inode":0,"device":0,"links":1,"target":"${path.join(dir, 'outside')}"}`,
    `{"name":"trap","type":"dir","mode":493,"uid":0,"gid":0,"mtime":[1,0],"ctime":[1,0],"size":0,"inode":0,"device":0,"links":1,"subtree":"${inner}"}`,
  ].join(','))).id;
  const root = (await w.saveBlob(BlobType.tree, encodeTree([
    file('..'), file('.'), file(''), file('a/../../escape'), file('/etc/holdfast-escape'), file(Buffer.from('nul\0byte')),
    file('ok.txt'),
    node('dups', { type: 'dir', subtree: duplicates as BlobId }),
    node('links', { type: 'dir', subtree: symlinkThenDir as BlobId }),
    node('up', { type: 'symlink', target: Buffer.from('../../..'), content: undefined }),
  ]), null)).id;
  await w.flush();
  const snapshot: Snapshot = {
    version: 1, time: new Date().toISOString(), host: 'attacker', username: 'x', paths: ['/'], tags: [], tree: root,
    parent: null, source: { kind: 'local', location: 'local' },
    stats: { files: 0, dirs: 0, bytes: 0, filesRead: 0, filesUnchanged: 0, bytesRead: 0, bytesAdded: 0, rawAdded: 0, blobsAdded: 0, warnings: 0, seconds: 0 },
    program: PROGRAM,
  };
  await saveSnapshot(w, snapshot);
  await lock.release();

  fs.mkdirSync(path.join(dir, 'outside'));
  const target = path.join(dir, 'target');
  const r = await restore(repo, snapshot, { target });
  const refused = r.warnings.filter((x) => x.code === 'HF_WARN_UNSAFE_NAME').length;
  t.equal(refused, 8, 'the eight hostile names are refused, each with a warning');
  t.same(fs.readdirSync(path.join(dir, 'outside')), [], 'nothing was written through the symlink');
  t.notOk(fs.existsSync(path.join(dir, 'escape')), 'nothing climbed out of the target');
  t.notOk(fs.existsSync('/etc/holdfast-escape'), 'nothing was written to an absolute path');
  t.equal(fs.readFileSync(path.join(target, 'ok.txt'), 'utf8'), 'payload\n', 'the safe file is restored');
  t.equal(fs.readFileSync(path.join(target, 'dups', 'same'), 'utf8'), 'payload\n', 'the first of duplicate names is restored');
  t.ok(fs.lstatSync(path.join(target, 'links', 'trap')).isSymbolicLink(), 'the symlink is restored as a link');
  t.equal(fs.readlinkSync(path.join(target, 'up')), '../../..', 'a symlink pointing out is recreated as data, not followed');
  const everything = fs.readdirSync(dir).sort();
  t.same(everything, ['outside', 'repo', 'target'], 'the test directory holds nothing else');
});

t.test('a name legal on a Windows server but too long for this file system: a warning that says so; the rest restores', async (t) => {
  const dir = tmpDir(t);
  const { repo } = await Repository.init(new LocalStorage(path.join(dir, 'repo')), 'pw');
  t.teardown(() => repo.close());
  const lock = await repo.lock('append', 'test');
  const w = repo.writer();
  const payload = (await w.saveBlob(BlobType.data, Buffer.from('payload\n'), null)).id;
  // 100 CJK characters: 100 UTF-16 units (NTFS allows 255), 300 bytes of UTF-8 (ext4 allows 255).
  const long = '\u65e5'.repeat(100);
  const root = (await w.saveBlob(BlobType.tree, encodeTree([
    node(long, { size: 8, content: [payload] }),
    node(`${long}-dir`, { type: 'dir', subtree: (await w.saveBlob(BlobType.tree, encodeTree([]), null)).id as BlobId, content: undefined }),
    node('ok.txt', { size: 8, content: [payload] }),
  ]), null)).id;
  await w.flush();
  const snapshot: Snapshot = {
    version: 1, time: new Date().toISOString(), host: 'fs1', username: 'x', paths: ['/'], tags: [], tree: root,
    parent: null, source: { kind: 'smb', location: 'smb://u@fs1:445/data' },
    stats: { files: 0, dirs: 0, bytes: 0, filesRead: 0, filesUnchanged: 0, bytesRead: 0, bytesAdded: 0, rawAdded: 0, blobsAdded: 0, warnings: 0, seconds: 0 },
    program: PROGRAM,
  };
  await saveSnapshot(w, snapshot);
  await lock.release();
  const r = await restore(repo, snapshot, { target: path.join(dir, 'target') });
  const tooLong = r.warnings.filter((x) => x.code === 'HF_WARN_WRITE' && /300 bytes, longer than this file system allows/.test(x.message));
  t.equal(tooLong.length, 1, 'the file gets a warning naming the cause');
  t.ok(r.warnings.some((x) => x.code === 'HF_WARN_WRITE' && /longer than this file system allows/.test(x.message) && x.path.endsWith('-dir')),
    'so does the directory');
  t.equal(fs.readFileSync(path.join(dir, 'target', 'ok.txt'), 'utf8'), 'payload\n', 'the rest is restored');
});
