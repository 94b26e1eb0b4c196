import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import t from 'tap';

import { Repository } from '../appliance/repository/index.ts';
import { LocalStorage } from '../appliance/storage/index.ts';
import { cli, finish, startCli } from './helpers/cli.ts';
import { duplicateBlobs } from './helpers/repo.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees } from './helpers/tree.ts';

const KILLS = 20;

/** Files of many sizes (a few large) in a new directory; returns how many. */
function addFiles(root: string, name: string, count: number): number {
  const dir = path.join(root, name, 'sub');
  fs.mkdirSync(dir, { recursive: true });
  for (let f = 0; f < count; f++) {
    const size = f % 10 === 0 ? randomInt(2 << 20, 12 << 20) : randomInt(0, 200_000);
    fs.writeFileSync(path.join(dir, `file-${f}.bin`), randomBytes(size));
  }
  return count;
}

t.test(`SIGKILL during backup, ${KILLS} times: the repository stays valid and nothing is stored twice`, async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  let files = 0;
  for (let d = 0; d < 6; d++) files += addFiles(src, `base-${d}`, 70); // about 250 MB
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };

  // How long an uninterrupted backup takes, so that kills land anywhere in it.
  const scratch = path.join(dir, 'scratch');
  t.equal((await cli(['init', '--repo', scratch], env)).code, 0);
  const clean = await cli(['backup', '--repo', scratch, '--json', src], env);
  t.equal(clean.code, 0, 'an uninterrupted backup works');
  const seconds = clean.json.seconds as number;
  t.ok(seconds > 0.3, `an uninterrupted backup takes ${seconds}s`);

  const repoDir = path.join(dir, 'repo');
  t.equal((await cli(['init', '--repo', repoDir], env)).code, 0);
  const completedCounts: number[] = [];
  let killed = 0;
  // Kill at a random moment within a window that adapts: it shrinks when a
  // run finished first (later runs only add new data), grows when it did not.
  let window = seconds * 1000;
  for (let i = 0; i < KILLS; i++) {
    if (i > 0) files += addFiles(src, `new-${i}`, 15); // new data for every run to store
    const child = startCli(['backup', '--repo', repoDir, '--json', src], env);
    const done = finish(child);
    await Promise.race([sleep(randomInt(0, Math.max(50, Math.round(window)))), done]);
    child.kill('SIGKILL');
    const r = await done;
    if (r.signal === 'SIGKILL') {
      killed++;
      window *= 1.25;
    } else if (r.code === 0) {
      completedCounts.push(files);
      window /= 2;
    } else {
      t.fail(`backup ${i} failed on its own: ${r.stderr}`);
    }

    const c = await cli(['check', '--repo', repoDir, '--json'], env);
    t.equal(c.code, 0, `after kill ${i}: check passes${c.code ? `: ${c.stdout}` : ''}`);
    const snaps = await cli(['snapshots', '--repo', repoDir, '--json'], env);
    const listed: number[] = snaps.json.map((x: { stats: { files: number } }) => x.stats.files);
    // A run killed after it saved its snapshot (before exiting) may have one more: complete, with every file.
    if (r.signal === 'SIGKILL' && listed.length === completedCounts.length + 1) completedCounts.push(files);
    t.same(listed, completedCounts, `after kill ${i}: only complete snapshots are listed`);
  }
  t.ok(killed >= KILLS / 2, `${killed} of ${KILLS} backups were killed mid-way`);

  const final = await cli(['backup', '--repo', repoDir, '--json', src], env);
  t.equal(final.code, 0, 'the next backup completes');
  const deep = await cli(['check', '--repo', repoDir, '--read-data'], env);
  t.equal(deep.code, 0, `check --read-data passes${deep.code ? `: ${deep.stdout}` : ''}`);
  const repo = await Repository.open(new LocalStorage(repoDir), { password: 'pw' });
  t.teardown(() => repo.close());
  t.same(await duplicateBlobs(repo), [], 'no blob is stored twice: what killed runs wrote was reused');
  const target = path.join(dir, 'out');
  t.equal((await cli(['restore', '--repo', repoDir, 'latest', '--target', target], env)).code, 0);
  t.same(compareTrees(src, path.join(target, src)), [], 'the restore is identical to the source');
});
