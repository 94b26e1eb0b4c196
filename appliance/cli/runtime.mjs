// Plain JavaScript on purpose: the bin uses it before the compile cache is on
// (a TypeScript module would load Node's type stripper on every start), and
// it must parse on an older Node too.
import os from 'node:os';
import path from 'node:path';

/**
 * V8 flags Holdfast runs with: a small young generation and slow old-space
 * growth keep a backup's memory flat (measured in docs/BENCHMARKS.md). They
 * only take effect on the command line; holdfast.mjs's shebang carries the
 * same list.
 */
export const V8_FLAGS = ['--max-semi-space-size=2', '--heap-growing-percent=20'];

/** The Node major version the project pins. */
export const NODE_MAJOR = 26;

/**
 * The local cache (catalogs, compile cache): the override, else
 * HOLDFAST_CACHE_DIR, else $CACHE_DIRECTORY/holdfast (systemd), else
 * $XDG_CACHE_HOME/holdfast, else ~/.cache/holdfast, else (no home at all)
 * a directory under the temporary directory.
 * @param {string} [override]
 * @returns {string}
 */
export function cacheRoot(override) {
  if (override) return path.resolve(override);
  if (process.env.HOLDFAST_CACHE_DIR) return path.resolve(process.env.HOLDFAST_CACHE_DIR);
  // systemd's CacheDirectory= (a service's user may have no home, or no passwd entry at all)
  const systemd = process.env.CACHE_DIRECTORY?.split(':')[0];
  if (systemd) return path.join(systemd, 'holdfast');
  if (process.env.XDG_CACHE_HOME) return path.join(process.env.XDG_CACHE_HOME, 'holdfast');
  let home;
  try {
    home = os.homedir();
  } catch {
    home = undefined; // no HOME and no passwd entry (a DynamicUser= without nss-systemd)
  }
  return home ? path.join(home, '.cache', 'holdfast') : path.join(os.tmpdir(), `holdfast-cache-${process.getuid?.() ?? 'user'}`);
}
