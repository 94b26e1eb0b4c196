import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import * as tar from 'tar';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { syncDir } from '../storage/index.ts';

/**
 * Releases on the box, side by side under the install root (/opt/holdfast):
 *   releases/VERSION/   one unpacked bundle each (bin/node, appliance/, …)
 *   current -> releases/VERSION   what the units run (ExecStart=/opt/holdfast/current/…)
 * Switching is one rename of a new symlink over `current`: a crash leaves
 * the old or the new release, never a mix.
 */
export interface InstalledRelease {
  version: string;
  dir: string;
}

const RELEASE_NAME = /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/;

async function readManifest(dir: string): Promise<{ version: string }> {
  const m = JSON.parse(await fsp.readFile(path.join(dir, 'release.json'), 'utf8')) as { format?: string; version?: string };
  if (m.format !== 'holdfast-release' || typeof m.version !== 'string') throw new Error('release.json is not a holdfast release manifest');
  return { version: m.version };
}

/** The release `current` points to, or null on a box with none. */
export async function currentRelease(root: string): Promise<InstalledRelease | null> {
  try {
    const dir = await fsp.realpath(path.join(root, 'current'));
    return { version: (await readManifest(dir)).version, dir };
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    throw new HoldfastError('HF_IO', `the current release under ${root} cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Unpacks a (verified) bundle into releases/VERSION: into a temporary
 * directory first, checked (release.json names `version`), then renamed.
 * An existing releases/VERSION that is not current is replaced.
 */
export async function installRelease(root: string, bundle: string, version: string): Promise<InstalledRelease> {
  if (!RELEASE_NAME.test(version)) throw new HoldfastError('HF_INVALID_ARGUMENT', `version ${JSON.stringify(version)} is not a release version`);
  const releases = path.join(root, 'releases');
  // Every service runs from the release, the console as a user of its own:
  // the tree is world-readable whatever the agent's umask (its unit has 0077).
  await fsp.mkdir(releases, { recursive: true, mode: 0o755 });
  await fsp.chmod(releases, 0o755);
  const tmp = path.join(releases, `.${version}.tmp-${process.pid}`);
  const dir = path.join(releases, version);
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { mode: 0o755 });
  await fsp.chmod(tmp, 0o755);
  try {
    await tar.extract({ file: bundle, cwd: tmp, strict: true, preserveOwner: false });
    await worldReadable(tmp);
    const m = await readManifest(tmp);
    if (m.version !== version) throw new HoldfastError('HF_UPDATE_VERIFY', `the bundle says it is ${m.version}, not ${version}`);
    const cur = await currentRelease(root);
    if (cur?.dir === dir) throw new HoldfastError('HF_CONFLICT', `${version} is the running release`);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rename(tmp, dir);
    await syncDir(releases);
    return { version, dir };
  } catch (err) {
    // node-tar may still be finishing a file when it rejects (strict mode refuses absolute and `..` paths).
    await fsp.rm(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch(() => undefined);
    if (err instanceof HoldfastError) throw err;
    throw ioError(`cannot unpack release ${version} into ${releases}`, err);
  }
}

/**
 * Directories 0755, files 0644 (0755 when executable by their owner): what
 * node-tar created is masked by the process umask, and the console, a user of
 * its own, must read (and exec bin/node from) the release too.
 */
async function worldReadable(dir: string): Promise<void> {
  await fsp.chmod(dir, 0o755);
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await worldReadable(p);
    else if (e.isFile()) await fsp.chmod(p, ((await fsp.stat(p)).mode & 0o100) ? 0o755 : 0o644);
  }
}

/** Points `current` at releases/VERSION atomically (new symlink, rename over, fsync the directory). */
export async function switchRelease(root: string, version: string): Promise<void> {
  const target = path.join('releases', version);
  if (!fs.existsSync(path.join(root, target, 'release.json'))) throw new HoldfastError('HF_NOT_FOUND', `release ${version} is not installed under ${root}`);
  const tmp = path.join(root, `.current.tmp-${process.pid}`);
  await fsp.rm(tmp, { force: true });
  await fsp.symlink(target, tmp);
  await fsp.rename(tmp, path.join(root, 'current'));
  await syncDir(root);
}

/** Removes releases other than those named (the current and the previous one stay for a rollback). */
export async function pruneReleases(root: string, keep: readonly string[]): Promise<string[]> {
  const removed: string[] = [];
  const releases = path.join(root, 'releases');
  for (const name of await fsp.readdir(releases).catch(() => [] as string[])) {
    if (keep.includes(name) || name.startsWith('.')) continue;
    await fsp.rm(path.join(releases, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}
