// Backups through the CLI from a real OpenSSH server (sshd started by the
// test, key authentication, the host key pinned): restore and compare with
// the original; an unchanged second backup; host key refusals with the
// fingerprint shown.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { cli } from './helpers/cli.ts';
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
