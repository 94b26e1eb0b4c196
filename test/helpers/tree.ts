import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { mknod, setTimes } from '../../native/index.ts';

const isRoot = process.getuid?.() === 0;

/** A path made of a directory and raw name bytes. */
export function bpath(dir: string | Buffer, ...names: (string | Buffer)[]): Buffer {
  let p = Buffer.isBuffer(dir) ? dir : Buffer.from(dir);
  for (const n of names) p = Buffer.concat([p, Buffer.from('/'), Buffer.isBuffer(n) ? n : Buffer.from(n)]);
  return p;
}

/** Deterministic pseudo-random bytes: an AES-256-CTR keystream keyed by the seed. */
export function pseudoRandom(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/**
 * A tree with what a real share holds and a careless tool mangles: names in
 * NFC and NFD, with newlines, tabs, quotes, leading dashes, invalid UTF-8,
 * 255 bytes long; deep paths; empty, tiny, multi-chunk, sparse and all-zero
 * files; symlinks (relative, absolute, dangling, looping); hard links across
 * directories; a FIFO; a device node and other owners when root; odd modes
 * (read-only directory, sticky, setuid) and nanosecond, pre-1970 and future
 * times. Returns what it made, for assertions.
 */
export async function makeOddTree(root: string): Promise<{ files: number }> {
  fs.mkdirSync(root, { recursive: true });
  const w = (rel: string | Buffer, data: Buffer | string, mode = 0o644) => {
    const p = bpath(root, rel);
    fs.writeFileSync(p, data, { mode });
    fs.chmodSync(p, mode);
  };
  let files = 0;
  const names: (string | Buffer)[] = [
    'plain.txt', 'caf\u00e9-nfc', 'cafe\u0301-nfd', 'new\nline', 'tab\there', '"quotes"', "it's", '-leading-dash',
    ' leading space', 'trailing space ', '...', 'back\\slash', 'emoji-\u{1f600}', '\u6f22\u5b57', 'x'.repeat(255),
    Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x62, 0x69, 0x6e]), // "f\xff\xfe.bin": not UTF-8
  ];
  fs.mkdirSync(path.join(root, 'names'));
  for (const [i, n] of names.entries()) {
    w(Buffer.concat([Buffer.from('names/'), Buffer.isBuffer(n) ? n : Buffer.from(n)]), `name ${i}\n`);
    files++;
  }
  fs.mkdirSync(path.join(root, 'data'));
  w('data/empty', '');
  w('data/one-byte', 'x');
  w('data/small.bin', pseudoRandom('small', 100_000));
  w('data/three-megabytes.bin', pseudoRandom('3m', 3 * 1024 * 1024 + 17));
  w('data/ten-megabytes.bin', pseudoRandom('10m', 10 * 1024 * 1024 + 5));
  w('data/text.log', Array.from({ length: 40000 }, (_, i) => `line ${i}: the quick brown fox\n`).join(''));
  w('data/zeros.bin', Buffer.alloc(8 * 1024 * 1024));
  files += 7;
  // sparse: data, a 20 MiB hole, data
  const sparse = bpath(root, 'data', 'sparse.img');
  const fd = fs.openSync(sparse, 'w');
  fs.writeSync(fd, pseudoRandom('head', 4096), 0, 4096, 0);
  fs.writeSync(fd, pseudoRandom('tail', 4096), 0, 4096, 24 * 1024 * 1024);
  fs.closeSync(fd);
  files++;

  fs.mkdirSync(path.join(root, 'links'));
  fs.symlinkSync('../data/small.bin', path.join(root, 'links', 'relative'));
  fs.symlinkSync('/etc/passwd', path.join(root, 'links', 'absolute-outside'));
  fs.symlinkSync('does-not-exist', path.join(root, 'links', 'dangling'));
  fs.symlinkSync('../data', path.join(root, 'links', 'to-dir'));
  fs.symlinkSync('loop-b', path.join(root, 'links', 'loop-a'));
  fs.symlinkSync('loop-a', path.join(root, 'links', 'loop-b'));
  fs.symlinkSync(Buffer.from([0x74, 0xff, 0x67]), bpath(root, 'links', 'target-not-utf8'));
  fs.mkdirSync(path.join(root, 'hard', 'a'), { recursive: true });
  fs.mkdirSync(path.join(root, 'hard', 'b'));
  w('hard/a/original', pseudoRandom('hard', 5000));
  fs.linkSync(path.join(root, 'hard/a/original'), path.join(root, 'hard/b/second-name'));
  fs.linkSync(path.join(root, 'hard/a/original'), path.join(root, 'hard/third-name'));
  files += 3;
  fs.mkdirSync(path.join(root, 'special'));
  await mknod(bpath(root, 'special', 'fifo'), 0o010644, 0);
  if (isRoot) {
    await mknod(bpath(root, 'special', 'null-like'), 0o020666, (1 << 8) | 3); // char 1:3
    w('data/owned-by-someone', 'owner test\n');
    fs.lchownSync(path.join(root, 'data/owned-by-someone'), 1234, 5678);
    fs.lchownSync(path.join(root, 'links/relative'), 4321, 8765);
    w('data/setuid', '#!/bin/sh\n', 0o4755);
    files += 2;
  }
  // deep: over 1000 bytes of path
  let deep = path.join(root, 'deep');
  for (let i = 0; i < 18; i++) deep = path.join(deep, `level-${i}-${'d'.repeat(50)}`);
  fs.mkdirSync(deep, { recursive: true });
  fs.writeFileSync(path.join(deep, 'bottom.txt'), 'deep\n');
  files++;
  fs.mkdirSync(path.join(root, 'empty-dir'));
  fs.mkdirSync(path.join(root, 'modes'));
  w('modes/private', 'p', 0o600);
  w('modes/read-only', 'r', 0o444);
  w('modes/exec', '#!/bin/sh\n', 0o755);
  files += 3;
  fs.mkdirSync(path.join(root, 'modes', 'sticky'));
  fs.chmodSync(path.join(root, 'modes', 'sticky'), 0o1777);
  fs.mkdirSync(path.join(root, 'modes', 'read-only-dir'));
  w('modes/read-only-dir/inside', 'i');
  files++;
  fs.chmodSync(path.join(root, 'modes', 'read-only-dir'), 0o555);

  // times: nanoseconds, before 1970, far future; directories last (children change them)
  await setTimes(bpath(root, 'data', 'small.bin'), [1_600_000_000, 123_456_789], [1_600_000_000, 123_456_789], false);
  await setTimes(bpath(root, 'data', 'one-byte'), [-86_400 * 400, 5], [-86_400 * 400, 5], false);
  await setTimes(bpath(root, 'data', 'empty'), [4_102_444_800, 999_999_999], [4_102_444_800, 999_999_999], false);
  await setTimes(bpath(root, 'links', 'relative'), [1_500_000_000, 42], [1_500_000_000, 42], true);
  await setTimes(bpath(root, 'empty-dir'), [1_400_000_000, 7], [1_400_000_000, 7], false);
  return { files };
}

interface Info {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  mtimeNs: bigint;
  ino: bigint;
  dev: bigint;
  nlink: bigint;
  rdev: bigint;
  target?: Buffer;
  digest?: string;
}

/** The entry type as the tree comparisons name it. */
export function typeOf(st: fs.Stats | fs.BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  return 'socket';
}

/** SHA-256 of a file's bytes, in hex (read in 1 MiB pieces). */
export function fileDigest(p: string | Buffer): string {
  const h = createHash('sha256');
  const fd = fs.openSync(p, 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Every path under root (relative, as latin1 keys of the raw bytes) with what a restore must reproduce. */
export function scanTree(root: string): Map<string, Info> {
  const out = new Map<string, Info>();
  const walk = (dir: Buffer, rel: Buffer) => {
    for (const name of fs.readdirSync(dir, { encoding: 'buffer' })) {
      const p = bpath(dir, name);
      const r = rel.length ? bpath(rel, name) : name;
      const st = fs.lstatSync(p, { bigint: true });
      const info: Info = {
        type: typeOf(st), mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), size: st.size,
        mtimeNs: st.mtimeNs, ino: st.ino, dev: st.dev, nlink: st.nlink, rdev: st.rdev,
      };
      if (info.type === 'symlink') info.target = fs.readlinkSync(p, { encoding: 'buffer' });
      if (info.type === 'file') info.digest = fileDigest(p);
      out.set(r.toString('latin1'), info);
      if (info.type === 'dir') walk(p, r);
    }
  };
  walk(Buffer.from(root), Buffer.alloc(0));
  return out;
}

export interface CompareOptions {
  /** Compare owners (default: when running as root). */
  owners?: boolean;
  /** Compare permission bits (default true; SMB has none to keep). */
  modes?: boolean;
  /** Compare mtimes at this resolution (default 1 ns; SMB keeps 100 ns, SFTP whole seconds). */
  mtimeResolutionNs?: bigint;
}

/**
 * Differences between two trees: paths, types, bytes, sizes, permission bits,
 * nanosecond mtimes (directories included), symlink targets, device numbers,
 * owners (when root), and which files are hard links of each other. A
 * directory's own size is not compared (it reflects the file system's
 * history, not data). Empty when identical.
 */
export function compareTrees(a: string, b: string, options: CompareOptions = {}): string[] {
  const owners = options.owners ?? isRoot;
  const modes = options.modes ?? true;
  const res = options.mtimeResolutionNs ?? 1n;
  const ta = scanTree(a);
  const tb = scanTree(b);
  const diffs: string[] = [];
  const show = (k: string) => JSON.stringify(Buffer.from(k, 'latin1').toString('utf8'));
  for (const [k, x] of ta) {
    const y = tb.get(k);
    if (!y) {
      diffs.push(`missing ${show(k)}`);
      continue;
    }
    const d = (what: string, p: unknown, q: unknown) => diffs.push(`${show(k)}: ${what} ${String(p)} != ${String(q)}`);
    if (x.type !== y.type) { d('type', x.type, y.type); continue; }
    if (modes && x.type !== 'symlink' && x.mode !== y.mode) d('mode', x.mode.toString(8), y.mode.toString(8));
    if (x.mtimeNs / res !== y.mtimeNs / res) d('mtime ns', x.mtimeNs, y.mtimeNs);
    if (x.type === 'file' && (x.size !== y.size || x.digest !== y.digest)) d('content', `${x.size}:${x.digest}`, `${y.size}:${y.digest}`);
    if (x.type === 'symlink' && !x.target!.equals(y.target!)) d('target', x.target!.toString('latin1'), y.target!.toString('latin1'));
    if ((x.type === 'chardev' || x.type === 'blockdev') && x.rdev !== y.rdev) d('rdev', x.rdev, y.rdev);
    if (owners && (x.uid !== y.uid || x.gid !== y.gid)) d('owner', `${x.uid}:${x.gid}`, `${y.uid}:${y.gid}`);
  }
  for (const k of tb.keys()) if (!ta.has(k)) diffs.push(`extra ${show(k)}`);
  // hard-link groups must match
  const groups = (t: Map<string, Info>) => {
    const byInode = new Map<string, string[]>();
    for (const [k, v] of t) {
      if (v.type !== 'file' || v.nlink < 2n) continue;
      const key = `${v.dev}:${v.ino}`;
      byInode.set(key, [...(byInode.get(key) ?? []), k]);
    }
    return new Set([...byInode.values()].filter((g) => g.length > 1).map((g) => g.sort().join('\n')));
  };
  const ga = groups(ta);
  const gb = groups(tb);
  for (const g of ga) if (!gb.has(g)) diffs.push(`hard-link group not kept: ${g.split('\n').map(show).join(', ')}`);
  return diffs;
}

/** Allocated bytes of a file (to see holes). */
export function allocated(p: string | Buffer): number {
  return Number(fs.statSync(p, { bigint: true }).blocks) * 512;
}

export { isRoot };
