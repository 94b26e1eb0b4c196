import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { cli } from './helpers/cli.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, isRoot, pseudoRandom } from './helpers/tree.ts';

t.test('usage errors, missing secrets and missing repositories: codes and exit statuses', async (t) => {
  const dir = tmpDir(t);
  const env = { HOLDFAST_PASSWORD: undefined, HOLDFAST_RECOVERY_KEY: undefined, HOLDFAST_CACHE_DIR: path.join(dir, 'c') };
  const none = await cli(['frobnicate'], env);
  t.equal(none.code, 2, 'an unknown command is a usage error');
  t.match(none.stderr, /unknown command/);
  t.equal((await cli(['backup', '--repo', dir], env)).code, 2, 'a missing argument is a usage error');
  const noPw = await cli(['init', '--repo', path.join(dir, 'r'), '--json'], env);
  t.equal(noPw.code, 1);
  t.equal(noPw.json.error.code, 'HF_NO_PASSWORD');
  t.match(noPw.stderr, /HOLDFAST_PASSWORD|--password-file/, 'it says how to give one');
  const noRepo = await cli(['snapshots', '--repo', path.join(dir, 'nothing'), '--json'], { ...env, HOLDFAST_PASSWORD: 'x' });
  t.equal(noRepo.json.error.code, 'HF_REPO_NOT_FOUND');
  t.match(noRepo.stderr, /holdfast init/);
  const help = await cli(['--help'], env);
  t.equal(help.code, 0);
  for (const c of ['init', 'backup', 'snapshots', 'ls', 'find', 'restore', 'check', 'forget', 'prune', 'unlock', 'key']) {
    t.match(help.stdout, new RegExp(`\\b${c}\\b`), `help lists ${c}`);
  }
  const pwFile = path.join(dir, 'pw');
  fs.writeFileSync(pwFile, 'from a file\n');
  t.equal((await cli(['init', '--repo', path.join(dir, 'r2'), '--password-file', pwFile], env)).code, 0, '--password-file');
  t.equal((await cli(['snapshots', '--repo', path.join(dir, 'r2')], { ...env, HOLDFAST_PASSWORD: 'from a file' })).code, 0,
    'the trailing newline is not part of the passphrase');
});

t.test('the JSON contract, ls, find, forget and prune through the CLI', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'report.txt'), 'v1');
  fs.writeFileSync(path.join(src, 'sub', 'data.bin'), pseudoRandom('data', 400_000));
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = path.join(dir, 'repo');
  const init = await cli(['init', '--repo', repo, '--json'], env);
  t.match(init.json, { id: /^[0-9a-f]{64}$/, recoveryKey: /^([0-9A-Z]{5}-){10}[0-9A-Z]{5}$/ }, 'init --json gives the id and recovery key');
  const ids: string[] = [];
  for (let v = 1; v <= 4; v++) {
    fs.writeFileSync(path.join(src, 'report.txt'), `v${v}`);
    const b = await cli(['backup', '--repo', repo, '--json', '--tag', `v${v}`, src], env);
    t.equal(b.code, 0);
    for (const k of ['snapshot', 'files', 'bytesRead', 'bytesAdded', 'seconds']) t.ok(k in b.json, `backup --json has ${k}`);
    ids.push(b.json.snapshot);
  }
  const snaps = await cli(['snapshots', '--repo', repo, '--json'], env);
  t.same(snaps.json.map((s: { id: string }) => s.id), ids);
  t.match((await cli(['snapshots', '--repo', repo], env)).stdout, new RegExp(ids[0]!.slice(0, 8)), 'short ids in the human listing');

  const ls = await cli(['ls', '--repo', repo, '--json', 'latest', src], env);
  t.same(ls.json.entries.map((e: { path: string }) => e.path), [path.join(src, 'report.txt'), path.join(src, 'sub')]);
  const lsr = await cli(['ls', '--repo', repo, ids[0]!.slice(0, 6), src, '-r'], env);
  t.match(lsr.stdout, 'sub/data.bin', 'a snapshot by id prefix, recursively');
  const lsFile = await cli(['ls', '--repo', repo, '--json', 'latest', path.join(src, 'sub', 'data.bin')], env);
  t.equal(lsFile.json.entries[0].size, 400_000, 'ls of a file shows the file');
  const missing = await cli(['ls', '--repo', repo, '--json', 'latest', '/no/such/path'], env);
  t.equal(missing.json.error.code, 'HF_PATH_NOT_FOUND');
  const noSnap = await cli(['ls', '--repo', repo, '--json', 'ffff'], env);
  t.equal(noSnap.json.error.code, 'HF_SNAPSHOT_NOT_FOUND');

  const found = await cli(['find', '--repo', repo, '--json', '*.TXT', '-i'], env);
  t.equal(found.json.matches.length, 4, 'find: one match per snapshot holding the file');
  t.ok(found.json.matches.every((m: { path: string }) => m.path === path.join(src, 'report.txt')));
  t.equal((await cli(['find', '--repo', repo, '--json', '*.TXT'], env)).json.matches.length, 0, 'case-sensitive by default');

  const dry = await cli(['forget', '--repo', repo, '--keep-last', '2', '--dry-run', '--json'], env);
  t.same(dry.json.wouldRemove.sort(), ids.slice(0, 2).sort(), 'dry run: the two oldest would go');
  t.equal((await cli(['snapshots', '--repo', repo, '--json'], env)).json.length, 4, 'and nothing went');
  const kept = await cli(['forget', '--repo', repo, '--keep-last', '2', '--keep-tag', 'v1', '--prune', '--json'], env);
  t.same(kept.json.removed, [ids[1]], 'keep-last 2 and the tagged v1: only v2 goes');
  t.ok(kept.json.prune.blobsRemoved >= 1, 'prune removed the blob only v2 used');
  t.equal((await cli(['check', '--repo', repo, '--read-data'], env)).code, 0, 'check passes after prune');
  const after = await cli(['find', '--repo', repo, '--json', 'report.txt'], env);
  t.equal(after.json.matches.length, 3, 'the catalog dropped the forgotten snapshot');
  const target = path.join(dir, 'out');
  t.equal((await cli(['restore', '--repo', repo, ids[0]!, '--target', target], env)).code, 0);
  t.equal(fs.readFileSync(path.join(target, src, 'report.txt'), 'utf8'), 'v1', 'the kept old snapshot restores after prune');
  t.equal((await cli(['forget', '--repo', repo, '--json'], env)).json.error.code, 'HF_USAGE', 'forget with no policy is refused');
});

t.test('output into a pipe that closes early ends quietly (holdfast ls | head)', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  for (let i = 0; i < 3000; i++) fs.writeFileSync(path.join(src, `file-${i}`), String(i));
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = path.join(dir, 'repo');
  await cli(['init', '--repo', repo], env);
  await cli(['backup', '--repo', repo, src], env);
  const { execFileSync } = await import('node:child_process');
  const { cliArgs } = await import('./helpers/cli.ts');
  const errFile = path.join(dir, 'stderr');
  const cmd = `"${process.execPath}" ${cliArgs(['ls', '--repo', repo, 'latest', src, '-r']).map((a) => `'${a}'`).join(' ')}`;
  const out = execFileSync('bash', ['-c', `${cmd} 2>"${errFile}" | head -2; echo "exit \${PIPESTATUS[0]}"`],
    { env: { ...process.env, ...env } }).toString();
  t.equal(out.trim().split('\n').length, 3, 'head got its two lines');
  t.match(out, /exit 0$/m, 'holdfast exited 0');
  t.equal(fs.readFileSync(errFile, 'utf8'), '', 'and printed no error or stack trace');
});

t.test('key passwd with the recovery key; unlock of a stale lock', async (t) => {
  const dir = tmpDir(t);
  const env = { HOLDFAST_PASSWORD: 'old', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = path.join(dir, 'repo');
  const recoveryKey = (await cli(['init', '--repo', repo, '--json'], env)).json.recoveryKey;
  const changed = await cli(['key', 'passwd', '--repo', repo], { ...env, HOLDFAST_PASSWORD: undefined, HOLDFAST_RECOVERY_KEY: recoveryKey, HOLDFAST_NEW_PASSWORD: 'new' });
  t.equal(changed.code, 0, `passwd with the recovery key${changed.code ? `: ${changed.stderr}` : ''}`);
  t.equal((await cli(['snapshots', '--repo', repo, '--json'], env)).json.error.code, 'HF_WRONG_PASSWORD', 'the old passphrase is gone');
  t.equal((await cli(['snapshots', '--repo', repo], { ...env, HOLDFAST_PASSWORD: 'new' })).code, 0, 'the new one works');
  // opened with the passphrase itself: HOLDFAST_PASSWORD is the old one, never taken for the new one
  const again = await cli(['key', 'passwd', '--repo', repo], { ...env, HOLDFAST_PASSWORD: 'new', HOLDFAST_NEW_PASSWORD: 'newer' });
  t.equal(again.code, 0, `passwd with the passphrase${again.code ? `: ${again.stderr}` : ''}`);
  t.equal((await cli(['snapshots', '--repo', repo, '--json'], { ...env, HOLDFAST_PASSWORD: 'new' })).json.error.code, 'HF_WRONG_PASSWORD', 'the passphrase it was opened with is gone');
  t.equal((await cli(['snapshots', '--repo', repo], { ...env, HOLDFAST_PASSWORD: 'newer' })).code, 0, 'HOLDFAST_NEW_PASSWORD is the new one');
  const none = await cli(['key', 'passwd', '--repo', repo, '--json'], { ...env, HOLDFAST_PASSWORD: 'newer' });
  t.equal(none.json.error.code, 'HF_NO_PASSWORD', 'without a new passphrase nothing changes');
  const stale = { mode: 'append', host: 'elsewhere', pid: 1, pidStart: null, user: 'x', command: 'holdfast backup', time: '2000-01-01T00:00:00Z' };
  fs.writeFileSync(path.join(repo, 'locks', 'writer'), JSON.stringify(stale));
  const u = await cli(['unlock', '--repo', repo], env);
  t.match(u.stdout, /removed append lock of pid 1 on elsewhere/);
  t.same(fs.readdirSync(path.join(repo, 'locks')), []);
});

t.test('unreadable files are warnings (exit 3), the rest is backed up', { skip: isRoot ? false : 'needs root to run the backup as another user' }, async (t) => {
  const dir = tmpDir(t);
  fs.chmodSync(dir, 0o755);
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'closed'), { recursive: true });
  fs.writeFileSync(path.join(src, 'open.txt'), 'readable');
  fs.writeFileSync(path.join(src, 'secret.txt'), 'not for you', { mode: 0o600 });
  fs.writeFileSync(path.join(src, 'closed', 'inside.txt'), 'hidden');
  fs.chmodSync(path.join(src, 'closed'), 0o700);
  const work = path.join(dir, 'work');
  fs.mkdirSync(work);
  fs.chownSync(work, 65534, 65534);
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(work, 'cache'), HOME: work };
  const asNobody = { uid: 65534, gid: 65534 };
  const repo = path.join(work, 'repo');
  t.equal((await cli(['init', '--repo', repo], env, asNobody)).code, 0);
  const b = await cli(['backup', '--repo', repo, '--json', src], env, asNobody);
  t.equal(b.code, 3, 'exit 3: saved, with warnings');
  t.match(b.stderr, /secret\.txt.*permission denied.*HF_WARN_UNREADABLE/);
  t.match(b.stderr, /closed.*HF_WARN_UNREADABLE/);
  t.equal(b.json.warnings, 2);
  const target = path.join(work, 'out');
  t.equal((await cli(['restore', '--repo', repo, 'latest', '--target', target], env, asNobody)).code, 0);
  t.equal(fs.readFileSync(path.join(target, src, 'open.txt'), 'utf8'), 'readable', 'everything else is there');
  t.notOk(fs.existsSync(path.join(target, src, 'secret.txt')), 'the unreadable file is not in the snapshot');
  t.same(fs.readdirSync(path.join(target, src, 'closed')), [], 'the unreadable directory is recorded, empty, with its metadata');
  fs.rmSync(path.join(src, 'secret.txt'));
  fs.rmSync(path.join(src, 'closed'), { recursive: true });
  fs.rmSync(path.join(target, src, 'closed'), { recursive: true });
  t.same(compareTrees(src, path.join(target, src), { owners: false }), [], 'the readable part restores identically');
});
