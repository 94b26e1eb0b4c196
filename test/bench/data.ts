// Input data, prepared once in the work directory and reused: a tree of real
// files copied from /usr, and consecutive releases of one npm package.
import fs from 'node:fs';
import path from 'node:path';

import { note } from './report.ts';
import { BenchError, removeTree, run } from './run.ts';

/**
 * Source directories under / copied in this order until the limit is reached:
 * /usr/share first (tens of thousands of small files: documentation, locales,
 * man pages), then shared libraries (large files), so that both regimes are
 * in the measurement, as on a file server.
 */
const TREE_SOURCES = ['usr/share', 'usr/lib/x86_64-linux-gnu', 'usr/include', 'usr/lib'];
const TREE_LIMIT = 1.3e9;
/** Bumped when the way the tree is prepared changes: older copies are made again. */
const TREE_FORMAT = 3;

export interface TreeStats {
  files: number;
  dirs: number;
  symlinks: number;
  /** Bytes of regular files. */
  bytes: number;
  /** Regular files with more than one link. */
  hardlinked: number;
}

/**
 * Walks a tree depth-first in name order without following symlinks; visit
 * sees each entry (relative path) before its children and stops the walk by
 * returning false. Returns false when stopped.
 */
export function walk(root: string, visit: (rel: string, st: fs.Stats) => boolean | void, rel = ''): boolean {
  for (const name of fs.readdirSync(path.join(root, rel)).sort(byCodeUnit)) {
    const r = rel ? `${rel}/${name}` : name;
    const st = fs.lstatSync(path.join(root, r));
    if (visit(r, st) === false) return false;
    if (st.isDirectory() && !walk(root, visit, r)) return false;
  }
  return true;
}

function byCodeUnit(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function treeStats(root: string): TreeStats {
  const s: TreeStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0, hardlinked: 0 };
  walk(root, (_rel, st) => {
    if (st.isFile()) {
      s.files++;
      s.bytes += st.size;
      if (st.nlink > 1) s.hardlinked++;
    } else if (st.isDirectory()) s.dirs++;
    else if (st.isSymbolicLink()) s.symlinks++;
  });
  return s;
}

/**
 * The paths (relative to /) to copy: each source's directories, regular files
 * and symlinks in sorted depth-first order, up to the first file that brings
 * the regular-file bytes to the limit.
 */
function selectTreePaths(): string[] {
  const picked: string[] = [];
  let bytes = 0;
  for (const src of TREE_SOURCES) {
    if (!fs.existsSync(path.join('/', src))) continue;
    picked.push(src);
    walk(path.join('/', src), (rel, st) => {
      if (!st.isFile() && !st.isDirectory() && !st.isSymbolicLink()) return;
      picked.push(`${src}/${rel}`);
      if (st.isFile()) bytes += st.size;
      return bytes < TREE_LIMIT;
    });
    if (bytes >= TREE_LIMIT) return picked;
  }
  throw new BenchError(`only ${bytes} bytes of regular files under ${TREE_SOURCES.join(', ')}; need ${TREE_LIMIT}`);
}

function markerFormat(marker: string): number | null {
  try {
    return (JSON.parse(fs.readFileSync(marker, 'utf8')) as { format?: number }).format ?? null;
  } catch {
    return null;
  }
}

/**
 * The tree data directory (work/tree-data), copied from /usr with tar on the
 * first run: modes, owners, times and symlinks kept; hard links become
 * separate files (as a file copy makes them), so every tool reads every byte
 * (/usr holds a 13-way hard-linked 25 MB driver, which a tool that reads a
 * hard-linked file once would skip 300 MB of). A marker with the counts says
 * the copy is complete.
 */
export function prepareTree(work: string): { root: string; prepared: boolean } {
  const root = path.join(work, 'tree-data');
  const marker = path.join(work, 'tree-data.done');
  if (markerFormat(marker) === TREE_FORMAT && fs.existsSync(root)) return { root, prepared: false };

  note(`tree: copying files from /usr to ${root} (first run only)`);
  removeTree(root);
  removeTree(marker);
  const staging = `${root}.tmp`;
  removeTree(staging);
  fs.mkdirSync(staging, { recursive: true });
  const list = path.join(work, 'tree-data.list');
  fs.writeFileSync(list, selectTreePaths().map((p) => `${p}\0`).join(''));
  run({
    file: 'bash',
    args: ['-o', 'pipefail', '-c',
      'tar -C / --null --no-recursion --hard-dereference -T "$1" -cf - | tar -C "$2" -xpf -', 'copy', list, staging],
  });
  fs.renameSync(staging, root);
  const stats = treeStats(root);
  fs.writeFileSync(marker, `${JSON.stringify({ format: TREE_FORMAT, ...stats, sources: TREE_SOURCES })}\n`);
  fs.rmSync(list);
  return { root, prepared: true };
}

export interface PackageVersion {
  version: string;
  dir: string;
}

/** The machine's npm, run with a PATH free of this project's node_modules/.bin. */
function npmCommand(): { file: string; env: NodeJS.ProcessEnv } {
  const PATH = (process.env.PATH ?? '').split(':').filter((p) => !p.includes('node_modules')).join(':');
  return { file: fs.existsSync('/usr/bin/npm') ? '/usr/bin/npm' : 'npm', env: { ...process.env, PATH } };
}

/**
 * Each release of pkg unpacked into work/versions/<version>/ (the tarball's
 * package/ folder), downloaded with `npm pack` when not there yet.
 */
export function prepareVersions(work: string, pkg: string, versions: readonly string[]): PackageVersion[] {
  const base = path.join(work, 'versions');
  const tarballs = path.join(work, 'versions-tgz');
  fs.mkdirSync(base, { recursive: true });
  fs.mkdirSync(tarballs, { recursive: true });
  const npm = npmCommand();
  return versions.map((version) => {
    const dir = path.join(base, version);
    if (fs.existsSync(dir)) return { version, dir };
    note(`versions: npm pack ${pkg}@${version}`);
    const r = run({ file: npm.file, args: ['pack', `${pkg}@${version}`, '--json', '--pack-destination', tarballs], env: npm.env, cwd: tarballs });
    const packed = JSON.parse(r.stdout) as { filename: string }[];
    const filename = packed[0]?.filename;
    if (!filename) throw new BenchError(`npm pack ${pkg}@${version} printed no file name`);
    const staging = `${dir}.tmp`;
    removeTree(staging);
    fs.mkdirSync(staging);
    run({ file: 'tar', args: ['-xzf', path.join(tarballs, path.basename(filename)), '-C', staging, '--strip-components=1'] });
    fs.renameSync(staging, dir);
    return { version, dir };
  });
}
