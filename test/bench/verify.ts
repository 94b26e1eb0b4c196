// Checks that a restored tree equals its source: metadata listing, then the
// bytes of every file (diff -r).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { typeOf } from '../helpers/tree.ts';
import { walk } from './data.ts';
import { BenchError } from './run.ts';

/**
 * One line per entry: type, permission bits, owner, size (files and
 * symlinks; a directory's size depends on the file system), mtime to the
 * second and symlink target.
 */
function listing(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const describe = (rel: string, st: fs.Stats) => {
    const type = typeOf(st);
    const size = type === 'dir' ? '-' : String(st.size);
    const target = type === 'symlink' ? fs.readlinkSync(path.join(root, rel)) : '';
    const mtime = Math.floor(st.mtimeMs / 1000);
    return `${type} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${size} ${mtime} ${target}`;
  };
  out.set('.', describe('.', fs.lstatSync(root)));
  walk(root, (rel, st) => {
    out.set(rel, describe(rel, st));
  });
  return out;
}

function compareListings(src: Map<string, string>, dst: Map<string, string>): string[] {
  const problems: string[] = [];
  for (const [rel, want] of src) {
    const got = dst.get(rel);
    if (got === undefined) problems.push(`missing: ${rel} (${want})`);
    else if (got !== want) problems.push(`differs: ${rel}: source ${want} / restored ${got}`);
  }
  for (const rel of dst.keys()) if (!src.has(rel)) problems.push(`extra: ${rel}`);
  return problems;
}

/** Throws a BenchError listing the first differences when restored is not a copy of source. */
export function verifyRestore(source: string, restored: string): { entries: number } {
  if (!fs.existsSync(restored)) throw new BenchError(`restore verification failed: ${restored} does not exist`);
  const src = listing(source);
  const problems = compareListings(src, listing(restored));
  if (problems.length > 0) {
    throw new BenchError(`restore verification failed: ${problems.length} metadata difference(s) between ` +
      `${source} and ${restored}:\n${problems.slice(0, 30).join('\n')}`);
  }
  const d = spawnSync('diff', ['-r', '--no-dereference', '-q', source, restored], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (d.status !== 0) {
    const text = `${d.stdout}${d.stderr}${d.error?.message ?? ''}`.trim().split('\n').slice(0, 30).join('\n');
    throw new BenchError(`restore verification failed: diff -r ${source} ${restored} (exit ${d.status}):\n${text}`);
  }
  return { entries: src.size };
}
