import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { cli } from './helpers/cli.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, makeOddTree, pseudoRandom } from './helpers/tree.ts';

const WANT_FILES = 25_000;
/** Real trees every Debian system has, in the order they are copied. */
const CANDIDATES = ['/usr/share/man', '/usr/share/doc', '/usr/include', '/usr/share/locale', '/usr/share/zoneinfo',
  '/usr/lib/python3', '/usr/share/perl', '/usr/share/i18n', '/usr/lib/x86_64-linux-gnu', '/usr/share'];

function countFiles(dir: string): number {
  // one byte per file: names may hold newlines, so lines cannot be counted
  return Number(execFileSync('sh', ['-c', `find "${dir}" -type f -printf x | wc -c`]).toString().trim());
}

/** Copies real directories (with tar: symlinks, hard links, modes and times kept) until there are enough files. */
function copyRealTree(dest: string): { files: number; sources: string[] } {
  const sources: string[] = [];
  let files = 0;
  for (const dir of CANDIDATES) {
    if (files >= WANT_FILES) break;
    if (!fs.existsSync(dir) || sources.some((s) => dir.startsWith(`${s}/`) || s.startsWith(`${dir}/`))) continue;
    execFileSync('sh', ['-c', `tar -C / -cf - "${dir.slice(1)}" 2>/dev/null | tar -C "${dest}" -xf -`]);
    sources.push(dir);
    files = countFiles(dest);
  }
  return { files, sources };
}

t.test('a large real tree round-trips through the CLI: bytes, structure, modes, ns mtimes, links', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  const real = copyRealTree(src);
  t.comment(`copied ${real.files} real files from ${real.sources.join(', ')}`);
  if (real.files < WANT_FILES) {
    // a sparse system: pad with generated files so the tree is still large
    const pad = path.join(src, 'generated');
    fs.mkdirSync(pad);
    for (let i = real.files; i < WANT_FILES; i++) {
      const sub = path.join(pad, `d${i % 200}`);
      fs.mkdirSync(sub, { recursive: true });
      fs.writeFileSync(path.join(sub, `f${i}`), pseudoRandom(`pad${i}`, i % 5000));
    }
    t.comment(`padded with ${WANT_FILES - real.files} generated files`);
  }
  await makeOddTree(path.join(src, 'odd'));
  // hard links across the real tree, and an odd name at the top
  const someFile = execFileSync('sh', ['-c', `find "${src}" -type f -size +1k | head -1`]).toString().trim();
  fs.linkSync(someFile, path.join(src, 'hard link to a real file'));
  fs.writeFileSync(path.join(src, 'ütf-8 ∑ \nnewline'), 'top');

  const total = countFiles(src);
  t.ok(total >= WANT_FILES, `${total} files in the source`);
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = path.join(dir, 'repo');
  t.equal((await cli(['init', '--repo', repo], env)).code, 0);
  const b = await cli(['backup', '--repo', repo, '--json', src], env);
  t.equal(b.code, 0, `backup exits 0${b.code ? `: ${b.stderr}` : ''}`);
  t.equal(b.json.files, total, 'every file is in the snapshot');
  t.ok(b.json.snapshot && b.json.bytesRead > 0 && b.json.bytesAdded > 0 && b.json.seconds > 0, 'the JSON summary');
  const target = path.join(dir, 'restored');
  const r = await cli(['restore', '--repo', repo, 'latest', '--target', target, '--json'], env);
  t.equal(r.code, 0, `restore exits 0${r.code ? `: ${r.stderr}` : ''}`);
  t.same(compareTrees(src, path.join(target, src)), [], 'the restored tree is identical');
  const c = await cli(['check', '--repo', repo, '--read-data'], env);
  t.equal(c.code, 0, `check --read-data passes${c.code ? `: ${c.stdout}` : ''}`);
  t.match(c.stdout, /no errors/);
});
