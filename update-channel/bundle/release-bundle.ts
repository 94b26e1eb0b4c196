import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import * as tar from 'tar';

import { HoldfastError, ioError } from '../../appliance/errors/index.ts';
import { forEachLimit } from '../../appliance/limits/index.ts';
import { VERSION } from '../fleet/rollout.ts';

/** What a release carries about itself (`release.json` at the bundle's root). */
export interface ReleaseManifest {
  format: 'holdfast-release';
  formatVersion: 1;
  version: string;
  /** The Node runtime in bin/node (process.versions.node of it). */
  node: string;
  /** SOURCE_DATE_EPOCH the bundle was built with (every entry's mtime). */
  built: number;
}

export const MANIFEST = 'release.json';

/** The application's parts a release carries, relative to the checkout. */
const APP_DIRS = ['appliance', 'update-channel', 'docs'];
const APP_FILES = ['package.json', 'package-lock.json', 'README.md', 'native/index.ts', 'native/reference-chunker.ts', 'native/build/Release/holdfast_native.node'];

/** Files under root/rel; a package's nested node_modules is left out (the lock file lists those packages on their own). */
async function walk(root: string, rel: string, out: string[], skipModules = false): Promise<void> {
  for (const e of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
    const r = path.posix.join(rel, e.name);
    if (e.isDirectory()) {
      if (!(skipModules && e.name === 'node_modules')) await walk(root, r, out, skipModules);
    }
    else if (e.isFile() || e.isSymbolicLink()) out.push(r);
  }
}

/** node_modules packages the application needs at run time: package-lock.json's entries not marked dev (or optional-only). */
async function productionModules(appRoot: string): Promise<string[]> {
  const lock = JSON.parse(await fsp.readFile(path.join(appRoot, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean; devOptional?: boolean }> };
  return Object.entries(lock.packages)
    .filter(([k, v]) => k.startsWith('node_modules/') && !v.dev && !v.devOptional && fs.existsSync(path.join(appRoot, k)))
    .map(([k]) => k);
}

export interface BuildBundleOptions {
  /** The checkout (with `npm install` done: node_modules and the native addon built). */
  appRoot: string;
  out: string;
  version: string;
  /** The Node binary to ship as bin/node (default the pinned one, node_modules/node/bin/node). */
  runtime?: string;
  /** Every entry's mtime (default SOURCE_DATE_EPOCH, else 0): two builds of the same inputs are the same bytes. */
  sourceDateEpoch?: number;
  /** gzip level (default 6). */
  level?: number;
  /** Changes the staged tree before it is packed (tests make broken releases this way). Files may be hard links into the checkout: replace a file (write a new one, rename over), never edit it in place. */
  patch?: (stagingDir: string) => Promise<void>;
}

/**
 * Builds a release bundle: a gzip'd tar of the application (appliance/,
 * update-channel/, docs, the native addon, the production node_modules),
 * the Node runtime as bin/node, and release.json. Entries are sorted, owned
 * by 0:0 with no user names (portable), and all carry the same mtime, so the
 * bundle's bytes depend only on its inputs. Written temp → fsync → rename.
 */
export async function buildBundle(o: BuildBundleOptions): Promise<{ file: string; sha256: string; size: number; entries: number }> {
  if (!VERSION.test(o.version)) throw new HoldfastError('HF_USAGE', `version ${JSON.stringify(o.version)} is not MAJOR.MINOR.PATCH[-PRE]`);
  const appRoot = path.resolve(o.appRoot);
  const runtime = o.runtime ?? path.join(appRoot, 'node_modules', 'node', 'bin', 'node');
  for (const f of [runtime, path.join(appRoot, 'native/build/Release/holdfast_native.node')]) {
    if (!fs.existsSync(f)) throw new HoldfastError('HF_USAGE', `${f} is missing: run \`npm install\` in ${appRoot} first`);
  }
  const epoch = o.sourceDateEpoch ?? Number(process.env.SOURCE_DATE_EPOCH ?? 0);
  const stage = await fsp.mkdtemp(path.join(os.tmpdir(), 'holdfast-bundle-'));
  try {
    const files: string[] = [];
    for (const d of APP_DIRS) await walk(appRoot, d, files);
    files.push(...APP_FILES);
    for (const m of await productionModules(appRoot)) await walk(appRoot, m, files, true);
    const dirs = new Set(files.map((f) => path.dirname(f)));
    for (const d of [...dirs].sort()) await fsp.mkdir(path.join(stage, d), { recursive: true });
    // Hard links where the checkout and the staging directory share a file system (a patch replaces, never edits, a file).
    await forEachLimit(files, 16, async (f) => {
      await fsp.link(path.join(appRoot, f), path.join(stage, f)).catch(() => fsp.cp(path.join(appRoot, f), path.join(stage, f), { verbatimSymlinks: true }));
    });
    await fsp.mkdir(path.join(stage, 'bin'));
    await fsp.link(runtime, path.join(stage, 'bin', 'node')).catch(() => fsp.copyFile(runtime, path.join(stage, 'bin', 'node')));
    const node = await runtimeVersion(path.join(stage, 'bin', 'node'));
    const manifest: ReleaseManifest = { format: 'holdfast-release', formatVersion: 1, version: o.version, node, built: epoch };
    await fsp.writeFile(path.join(stage, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    await o.patch?.(stage);
    const all: string[] = [];
    await walk(stage, '.', all);
    const list = all.map((f) => f.replace(/^\.\//, '')).sort();
    const tmp = `${o.out}.${process.pid}.tmp`;
    await tar.create({ file: tmp, cwd: stage, gzip: { level: o.level ?? 6 }, portable: true, noDirRecurse: true, mtime: new Date(epoch * 1000), noPax: true }, list);
    const fh = await fsp.open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, o.out);
    const hash = createHash('sha256');
    for await (const c of fs.createReadStream(o.out)) hash.update(c as Buffer);
    return { file: o.out, sha256: hash.digest('hex'), size: (await fsp.stat(o.out)).size, entries: list.length };
  } catch (err) {
    if (err instanceof HoldfastError) throw err;
    throw ioError(`cannot build the release bundle ${o.out}`, err);
  } finally {
    await fsp.rm(stage, { recursive: true, force: true });
  }
}

async function runtimeVersion(bin: string): Promise<string> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    execFile(bin, ['-p', 'process.versions.node'], (err, stdout) => (err ? reject(err) : resolve(stdout.trim())));
  });
}
