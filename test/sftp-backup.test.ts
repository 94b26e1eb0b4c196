// Backups through the CLI from a real OpenSSH server (sshd started by the
// test, key authentication, the host key pinned): restore and compare with
// the original; an unchanged second backup; host key refusals with the
// fingerprint shown.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import t from 'tap';

import { cli, finish, startCli } from './helpers/cli.ts';
import { startSshd } from './helpers/sshd.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, makeOddTree } from './helpers/tree.ts';

t.test('SFTP: back up an odd tree through the CLI, restore it, identical bytes, structure, modes and times (whole seconds)', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t, 'hf-sftp-');
  fs.chmodSync(dir, 0o755);
  const src = path.join(dir, 'src');
  await makeOddTree(src);
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = ['--repo', path.join(dir, 'repo')];
  t.equal((await cli(['init', ...repo], env)).code, 0);
  const url = `sftp://${sshd.user}@127.0.0.1:${sshd.port}${src}`;
  const pin = ['--identity', sshd.identityFile, '--known-hosts', sshd.knownHostsFile];

  const first = await cli(['backup', ...repo, '--json', ...pin, url], env);
  t.equal(first.code, 0, `backup exits 0 (${first.stderr.trim()})`);
  t.equal(first.json.warnings, 0);
  const target = path.join(dir, 'restore');
  const r = await cli(['restore', ...repo, 'latest', '--target', target], env);
  t.equal(r.code, 0, r.stderr);
  // What SFTP v3 cannot carry (docs/DESIGN.md, "Sources"): times are whole
  // seconds as an unsigned 32-bit count (the tree's pre-1970 file comes back
  // wrong), there is no link count (hard links come back as copies) and no
  // device number. Exactly those differences, and no other.
  const diffs = compareTrees(src, path.join(target, src), { mtimeResolutionNs: 1_000_000_000n });
  const protocolLimits = [/^"data\/one-byte": mtime ns -/, /^"special\/null-like": rdev \d+ != 0$/, /^hard-link group not kept/];
  t.same(diffs.filter((d) => !protocolLimits.some((re) => re.test(d))), [], 'identical apart from what SFTP v3 cannot carry');
  t.equal(diffs.length, 3, 'and those three differences are there (the tree has each case once)');

  const second = await cli(['backup', ...repo, '--json', '--host-key', sshd.hostKeyFingerprint, '--identity', sshd.identityFile, url], env);
  t.equal(second.code, 0, second.stderr);
  t.equal(second.json.parent, first.json.snapshot, 'the first snapshot is the parent (pinned by fingerprint this time)');
  t.equal(second.json.bytesRead, 0, 'an unchanged tree: no byte read');
});

t.test('SFTP host keys: unknown and changed keys are refused with the fingerprint; nothing is stored', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t, 'hf-sftp-');
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = ['--repo', path.join(dir, 'repo')];
  t.equal((await cli(['init', ...repo], env)).code, 0);
  const url = `sftp://${sshd.user}@127.0.0.1:${sshd.port}/etc`;
  const unknown = await cli(['backup', ...repo, '--json', '--identity', sshd.identityFile, url], env);
  t.equal(unknown.code, 1);
  t.equal(unknown.json.error.code, 'HF_SOURCE_HOST_KEY_UNKNOWN');
  t.ok(unknown.stderr.includes(sshd.hostKeyFingerprint), 'the message shows the fingerprint to check');
  const other = 'SHA256:' + 'A'.repeat(43);
  const changed = await cli(['backup', ...repo, '--json', '--identity', sshd.identityFile, '--host-key', other, url], env);
  t.equal(changed.json.error.code, 'HF_SOURCE_HOST_KEY_CHANGED');
  t.ok(changed.stderr.includes(sshd.hostKeyFingerprint), 'the message shows the key the server offered');
  const wrongKey = path.join(dir, 'wrong_key');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrongKey]);
  const denied = await cli(['backup', ...repo, '--json', '--identity', wrongKey, '--known-hosts', sshd.knownHostsFile, url], env);
  t.equal(denied.json.error.code, 'HF_SOURCE_AUTH_FAILED', 'a key the server does not accept');
  const noKey = await cli(['backup', ...repo, '--json', '--known-hosts', sshd.knownHostsFile, url], env);
  t.equal(noKey.code, 2, 'no --identity is a usage error');
  t.same((await cli(['snapshots', ...repo, '--json'], env)).json, [], 'no snapshot was written');
});

/** Pack files in a local repository. */
function packs(repo: string): string[] {
  const data = path.join(repo, 'data');
  if (!fs.existsSync(data)) return [];
  return fs.readdirSync(data).flatMap((d) => fs.readdirSync(path.join(data, d)));
}

t.test('SFTP: the server gone for good mid-backup: exit 1, HF_SOURCE_DISCONNECTED after one reconnect cycle (31 s), no snapshot, what was stored kept', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t, 'hf-sftp-');
  fs.chmodSync(dir, 0o755);
  const src = path.join(dir, 'src');
  // Large files first (the walk is sorted), so the server goes while they
  // are read and the small directories are not listed yet.
  fs.mkdirSync(path.join(src, 'a-large'), { recursive: true });
  let total = 0;
  for (let i = 0; i < 8; i++) {
    const data = randomBytes(16 << 20);
    fs.writeFileSync(path.join(src, 'a-large', `part${i}.bin`), data);
    total += data.length;
  }
  for (let d = 0; d < 10; d++) {
    fs.mkdirSync(path.join(src, `b-small-${d}`));
    for (let i = 0; i < 30; i++) fs.writeFileSync(path.join(src, `b-small-${d}`, `f${i}`), `small file ${d}/${i}\n`);
  }
  const env = { HOLDFAST_PASSWORD: 'pw', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repoDir = path.join(dir, 'repo');
  const repo = ['--repo', repoDir];
  t.equal((await cli(['init', ...repo], env)).code, 0);

  const child = startCli(['backup', ...repo, '--json', '--identity', sshd.identityFile, '--known-hosts', sshd.knownHostsFile,
    `sftp://${sshd.user}@127.0.0.1:${sshd.port}${src}`], env);
  const result = finish(child);
  // Once something is stored, the server goes, and does not come back.
  const until = Date.now() + 60_000;
  while (packs(repoDir).length === 0 && Date.now() < until) await sleep(20);
  t.ok(packs(repoDir).length > 0, 'a pack was written before the server went away');
  await sshd.stop();
  const gone = performance.now();
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const r = await result;
  clearTimeout(timer);
  const seconds = (performance.now() - gone) / 1000;
  t.equal(r.code, 1, `exit 1 (${r.stderr.trim().split('\n').pop()})`);
  t.equal(r.json?.error?.code, 'HF_SOURCE_DISCONNECTED');
  t.match(r.stderr, /no snapshot was written/);
  t.ok(seconds < 40, `it gave up in ${seconds.toFixed(1)} s (one reconnect cycle, not one per file or directory)`);
  t.same((await cli(['snapshots', ...repo, '--json'], env)).json, [], 'no snapshot was written');

  // What was stored is kept: the same tree from another server sends less.
  const again = await startSshd(t);
  const second = await cli(['backup', ...repo, '--json', '--identity', again.identityFile, '--known-hosts', again.knownHostsFile,
    `sftp://${again.user}@127.0.0.1:${again.port}${src}`], env);
  t.equal(second.code, 0, second.stderr);
  t.equal(second.json.files, 8 + 300);
  t.ok(second.json.rawAdded < total, `the next backup stores only what was missing (${second.json.rawAdded} of ${total} bytes)`);
});
