// The private Samba of test/helpers/samba.ts, proved with the real smbclient:
// every profile serves byte-identical files; 'signing' refuses clients below
// SMB3_11 and signs every session fully; 'encrypt' refuses a client that cannot
// encrypt and encrypts the others; 'strict' does both; 'shadow' serves @GMT
// previous versions; stop() leaves no process of the server behind; names
// illegal on Windows behave as SambaNames documents.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import t, { type Test } from 'tap';

import {
  connectionPids, dropConnections, gmtToken, makeShadowSnapshot, openSmbclient, serverPids, sfmName,
  smbclient, smbclientGet, smbclientListShares, smbclientMirror, startSamba, startTimes,
  type SambaProfile, type SambaServer,
} from './helpers/samba.ts';
import { tmpDir } from './helpers/tmp.ts';

const DEEP = Array.from({ length: 24 }, (_, i) => `level-${String(i).padStart(2, '0')}-${'d'.repeat(12)}`).join('/');

/** What every profile serves: unicode (NFC, NFD, emoji), a 255-byte name, a path over 500 characters, binary data. */
const FILES: Record<string, Buffer> = {
  'hello.txt': Buffer.from('hello over smb\n'),
  'ünïcödé – 日本語 \u{1f600}.txt': Buffer.from('a unicode name\n'),
  'cafe\u0301 nfd.txt': Buffer.from('an NFD name\n'),
  ['n'.repeat(251) + '.txt']: Buffer.from('a 255-byte name\n'),
  [`${DEEP}/deep.txt`]: Buffer.from('a long path\n'),
  'dir/nested.bin': randomBytes(300_000),
  'dir/deeper/empty': Buffer.alloc(0),
};

/** Names that are illegal on Windows, each in its own directory (a '\\' spoils a whole listing). */
const ODD: string[] = ['new\nline', 'tab\there', 'colon:x', 'star*', 'q?', 'pipe|', 'lt<gt>', '"quoted"', 'back\\slash'];

function fill(root: string): void {
  for (const [rel, data] of Object.entries(FILES)) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), data);
  }
}

/** relative path → content, for every regular file under dir. */
function readTree(dir: string): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const e of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) out[path.relative(dir, path.join(e.parentPath, e.name))] = fs.readFileSync(path.join(e.parentPath, e.name));
  }
  return out;
}

/** A process identity that survives pid reuse: pid and start time (field 22 of /proc/<pid>/stat). */
function procId(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' ? undefined : `${pid}@${fields[19]}`;
  } catch {
    return undefined;
  }
}

/** What still runs of a server, read from /proc independently of the helper: the given processes, or any with its conf. */
function liveFromProc(ids: string[], conf: string): string[] {
  const live: string[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const id = procId(Number(name));
    if (id === undefined) continue;
    try {
      if (ids.includes(id) || fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(conf)) live.push(id);
    } catch { /* gone */ }
  }
  return live;
}

/** (a) the files list, download one by one and mirror byte-identical. */
async function provesServing(t: Test, s: SambaServer): Promise<void> {
  const ls = await smbclient(s, 'recurse; ls');
  t.equal(ls.code, 0, `ls exits 0: ${ls.stderr}`);
  for (const rel of Object.keys(FILES)) t.ok(ls.stdout.includes(path.basename(rel)), `lists ${JSON.stringify(rel)}`);
  const out = tmpDir(t, 'hf-smbget-');
  for (const [rel, data] of Object.entries(FILES)) {
    const local = path.join(out, `file-${Object.keys(FILES).indexOf(rel)}`);
    await smbclientGet(s, rel, local);
    t.ok(fs.readFileSync(local).equals(data), `get ${JSON.stringify(rel)} is byte-identical`);
  }
  await t.rejects(smbclientGet(s, 'no-such-file', path.join(out, 'x')), /NT_STATUS_OBJECT_NAME_NOT_FOUND/, 'a missing file rejects');
  const mirror = path.join(out, 'mirror');
  const { seconds } = await smbclientMirror(s, mirror);
  t.ok(seconds > 0 && seconds < 60, `mirror took ${seconds.toFixed(3)} s`);
  t.same(readTree(mirror), FILES, 'the mirror equals the share, names and bytes');
}

/** (e) stop() ends the listener, its helpers, open connections and samba-dcerpcd. */
async function provesStop(t: Test, s: SambaServer): Promise<void> {
  t.ok((await smbclientListShares(s)).includes(s.share), 'the share is announced (this starts samba-dcerpcd)');
  const open = await openSmbclient(s);
  t.same(connectionPids(s), [open.session.pid], 'one connection child for the open client');
  const pids = serverPids(s);
  t.ok(pids.includes(s.pid) && pids.includes(open.session.pid), `server processes: ${pids.join(' ')}`);
  const comms = pids.map((p) => fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim());
  t.ok(['smbd', 'smbd-notifyd', 'cleanupd', 'samba-dcerpcd'].every((c) => comms.includes(c)), `they are ${comms.join(' ')}`);
  const ids = pids.map(procId).filter((id) => id !== undefined);
  const conf = path.join(path.dirname(path.dirname(s.logFile)), 'smb.conf');
  t.equal(liveFromProc([], conf).length, pids.length, 'each carries the conf on its command line');
  await s.stop();
  await open.close();
  t.same(liveFromProc(ids, conf), [], 'no process of the server is left in /proc');
  t.same(serverPids(s), []);
  await s.stop();
  t.pass('stop() is idempotent');
}

const profiles: SambaProfile[] = ['default', 'signing', 'encrypt', 'strict', 'shadow'];

for (const profile of profiles) {
  t.test(`samba '${profile}': smbclient lists and fetches byte-identical files; stop leaves nothing`, async (t) => {
    const s = await startSamba(t, { profile });
    t.comment(`started in ${startTimes.at(-1)} ms on port ${s.port}`);
    t.equal(s.host, '127.0.0.1');
    t.equal(s.profile, profile);
    t.ok(fs.statSync(s.root).isDirectory() && fs.readdirSync(s.root).length === 0, 'root starts empty');
    t.match(fs.readFileSync(s.logFile, 'utf8'), /smbd version 4\.\d+/, 'logs to its own log file');
    fill(s.root);
    await provesServing(t, s);

    if (profile === 'default') {
      const open = await openSmbclient(s);
      t.equal(open.session.dialect, 'SMB3_11');
      t.equal(open.session.encryption.degree, 'none', 'not encrypted by default');
      t.not(open.session.signing.degree, 'full', 'not fully signed by default');
      await open.close();
      const old = await smbclient(s, 'ls', { args: ['-m', 'SMB2_10', '--option=client signing=disabled'] });
      t.equal(old.code, 0, 'an SMB2.1 client without signing is served by default');
      t.throws(() => makeShadowSnapshot(s, new Date()), /not 'shadow'/);
    }

    if (profile === 'signing') {
      // smbclient cannot refuse signing once on SMB2+ (the server's "signing
      // required" wins), so the refusing clients are the ones below the floor.
      for (const m of ['SMB2_10', 'SMB3_00']) {
        const r = await smbclient(s, 'ls', { args: ['-m', m, '--option=client signing=disabled'] });
        t.not(r.code, 0, `a ${m} client with signing disabled cannot connect`);
        t.match(r.stdout + r.stderr, /protocol negotiation failed: NT_STATUS_NOT_SUPPORTED/);
      }
      const off = await openSmbclient(s, { args: ['-m', 'SMB3_11', '--option=client signing=disabled', '--client-protection=off'] });
      t.equal(off.session.signing.degree, 'full', 'even a client that disables signing is fully signed');
      await off.close();
      const good = await openSmbclient(s);
      t.same([good.session.dialect, good.session.signing.degree], ['SMB3_11', 'full']);
      await good.close();
    }

    if (profile === 'encrypt') {
      const r = await smbclient(s, 'ls', { args: ['-m', 'SMB2_10'] });
      t.not(r.code, 0, 'an SMB2.1 client (no encryption) cannot connect');
      t.match(r.stdout + r.stderr, /session setup failed: NT_STATUS_ACCESS_DENIED/);
      const enc = await openSmbclient(s);
      t.same([enc.session.dialect, enc.session.encryption.degree], ['SMB3_11', 'full'], 'the profile client is encrypted');
      t.match(enc.session.encryption.cipher, /^AES-/);
      await enc.close();
      const off = await openSmbclient(s, { args: ['--client-protection=off'] });
      t.equal(off.session.encryption.degree, 'full', 'a client asking for no protection is encrypted anyway');
      await off.close();
    }

    if (profile === 'strict') {
      for (const m of ['SMB2_10', 'SMB3_00']) {
        const r = await smbclient(s, 'ls', { args: ['-m', m] });
        t.not(r.code, 0, `a ${m} client cannot connect`);
        t.match(r.stdout + r.stderr, /NT_STATUS_NOT_SUPPORTED/);
      }
      const off = await openSmbclient(s, { args: ['-m', 'SMB3_11', '--option=client signing=disabled', '--client-protection=off'] });
      t.same([off.session.dialect, off.session.encryption.degree], ['SMB3_11', 'full'], 'a client asking for no protection is encrypted');
      await off.close();
    }

    if (profile === 'shadow') {
      const first = new Date('2024-01-02T03:04:05.678Z');
      const token = makeShadowSnapshot(s, first);
      t.equal(token, '@GMT-2024.01.02-03.04.05');
      t.equal(gmtToken(first), token);
      const v1 = FILES['hello.txt']!;
      const v2 = Buffer.from('second version, longer than the first\n');
      const v3 = Buffer.from('third\n');
      fs.writeFileSync(path.join(s.root, 'hello.txt'), v2);
      const token2 = makeShadowSnapshot(s, new Date('2025-06-07T08:09:10Z'));
      fs.writeFileSync(path.join(s.root, 'hello.txt'), v3);
      fs.rmSync(path.join(s.root, 'dir', 'nested.bin'));
      fs.rmSync(path.join(s.root, DEEP.split('/')[0]!), { recursive: true });

      const info = await smbclient(s, 'allinfo hello.txt');
      t.equal(info.code, 0);
      const versions = [...info.stdout.matchAll(/^(@GMT-[\d.-]+)$/gm)].map((m) => m[1]);
      t.same(versions, [token2, token], 'allinfo lists both previous versions, newest first');
      const out = tmpDir(t, 'hf-smbshadow-');
      await smbclientGet(s, `${token}/hello.txt`, path.join(out, 'v1'));
      await smbclientGet(s, `${token2}/hello.txt`, path.join(out, 'v2'));
      await smbclientGet(s, 'hello.txt', path.join(out, 'v3'));
      t.ok(fs.readFileSync(path.join(out, 'v1')).equals(v1), 'the first @GMT version has the old bytes');
      t.ok(fs.readFileSync(path.join(out, 'v2')).equals(v2), 'the second @GMT version has the middle bytes');
      t.ok(fs.readFileSync(path.join(out, 'v3')).equals(v3), 'the normal path has the new bytes');
      await smbclientGet(s, `${token}/dir/nested.bin`, path.join(out, 'nested'));
      t.ok(fs.readFileSync(path.join(out, 'nested')).equals(FILES['dir/nested.bin']!), 'a deleted file lives on in the snapshot');
      // Samba 4.17 shadow_copy2 resolves an @GMT path's parent directory in the
      // live share: what lies below a directory deleted since cannot be opened.
      const top = DEEP.split('/')[0]!;
      const ls1 = await smbclient(s, `ls "${token}\\${top}\\*"`);
      t.match(ls1.stdout, /level-01-/, 'a deleted directory lists in the snapshot (its parent is live)');
      await t.rejects(smbclientGet(s, `${token}/${DEEP}/deep.txt`, path.join(out, 'deep')), /NT_STATUS_OBJECT_PATH_NOT_FOUND/,
        'but what lies deeper does not open (Samba 4.17)');
      const whole = await smbclientMirror(s, path.join(out, 'snapshot-mirror'), { snapshot: token, allowErrors: true });
      t.match(whole.errors.join('\n'), /NT_STATUS_OBJECT_PATH_NOT_FOUND listing .*level-00/, 'the snapshot mirror reports the vanished subtree');
      const expected = { ...FILES };
      delete expected[`${DEEP}/deep.txt`];
      t.same(readTree(path.join(out, 'snapshot-mirror')), expected, 'and copies the rest of the snapshot exactly');
      const ls = await smbclient(s, 'ls');
      t.notMatch(ls.stdout, /snapshot|@GMT/i, 'snapshots are not in the share listing');
      t.throws(() => makeShadowSnapshot(s, first), /exists already/);
    }

    await provesStop(t, s);
  });
}

t.test("names illegal on Windows: 'verbatim' lists but cannot open them, 'mangle' hides them, 'sfm' maps them", async (t) => {
  const content = (i: number) => Buffer.from(`odd name ${i}\n`);
  const fillOdd = (root: string) => ODD.forEach((n, i) => {
    fs.mkdirSync(path.join(root, `d${i}`));
    fs.writeFileSync(path.join(root, `d${i}`, n), content(i));
  });
  const verbatim = await startSamba(t, { profile: 'default', names: 'verbatim' });
  fillOdd(verbatim.root);
  for (const [i, n] of ODD.entries()) {
    const r = await smbclient(verbatim, `ls d${i}\\*`);
    if (n.includes('\\')) t.match(r.stdout + r.stderr, /NT_STATUS_INVALID_NETWORK_RESPONSE/, 'a backslash spoils the listing');
    else t.ok(r.stdout.includes(n), `${JSON.stringify(n)} is listed verbatim`);
  }
  const out = tmpDir(t, 'hf-smbnames-');
  await t.rejects(smbclientGet(verbatim, 'd2/colon:x', path.join(out, 'c')), /NT_STATUS_OBJECT_NAME_INVALID/, 'but cannot be opened');
  const partial = await smbclientMirror(verbatim, path.join(out, 'verbatim'), { allowErrors: true });
  t.ok(partial.errors.length >= ODD.length, `the mirror reports every failure (${partial.errors.length})`);
  await t.rejects(smbclientMirror(verbatim, path.join(out, 'verbatim2')), /NT_STATUS_/, 'and rejects without allowErrors');

  const mangle = await startSamba(t, { profile: 'default', names: 'mangle' });
  fillOdd(mangle.root);
  await smbclientMirror(mangle, path.join(out, 'mangle'));
  const mangled = readTree(path.join(out, 'mangle'));
  t.equal(Object.keys(mangled).length, ODD.length, 'every file arrives');
  for (const [rel, data] of Object.entries(mangled)) {
    const i = Number(/^d(\d+)/.exec(rel)![1]);
    t.match(path.basename(rel), /^[A-Z0-9_]{6}~[A-Z0-9]$/, `${JSON.stringify(ODD[i])} arrives as the 8.3 name ${path.basename(rel)}`);
    t.ok(data.equals(content(i)));
  }

  const sfm = await startSamba(t, { profile: 'shadow', names: 'sfm' });
  fillOdd(sfm.root);
  const token = makeShadowSnapshot(sfm, new Date('2024-05-06T07:08:09Z'));
  await smbclientMirror(sfm, path.join(out, 'sfm'));
  t.same(readTree(path.join(out, 'sfm')), Object.fromEntries(ODD.map((n, i) => [`d${i}/${sfmName(n)}`, content(i)])),
    'every name arrives mapped to the private-use area, with its bytes');
  await smbclientGet(sfm, `${token}/d2/${sfmName('colon:x')}`, path.join(out, 'sfm-old'));
  t.ok(fs.readFileSync(path.join(out, 'sfm-old')).equals(content(2)), 'catia stacks with shadow_copy2');
  for (const s of [verbatim, mangle, sfm]) await s.stop();
});

t.test('dropConnections kills the connection children, not the listener', async (t) => {
  const s = await startSamba(t, { profile: 'default' });
  fs.writeFileSync(path.join(s.root, 'f'), 'x');
  const a = await openSmbclient(s);
  const b = await openSmbclient(s);
  t.same(connectionPids(s).sort(), [a.session.pid, b.session.pid].sort());
  const killed = await dropConnections(s);
  t.same(killed.sort(), [a.session.pid, b.session.pid].sort());
  t.same(connectionPids(s), []);
  a.child.stdin?.write('ls\n');
  await a.close();
  t.match(a.output(), /NT_STATUS_(CONNECTION_DISCONNECTED|CONNECTION_RESET|END_OF_FILE|PIPE_BROKEN|INVALID_NETWORK_RESPONSE)/, 'the client sees the connection die');
  await b.close();
  t.ok(serverPids(s).includes(s.pid), 'the listener lives');
  t.equal((await smbclient(s, 'ls')).code, 0, 'a new connection works');
});

t.test('access runs as the real share user: a mode 000 file is ACCESS_DENIED; extra shares', async (t) => {
  const extra = tmpDir(t, 'hf-smbextra-');
  fs.chmodSync(extra, 0o755);
  fs.writeFileSync(path.join(extra, 'other.txt'), 'in the extra share');
  const s = await startSamba(t, { profile: 'default', shares: { extra } });
  fs.writeFileSync(path.join(s.root, 'secret'), 'no');
  fs.chmodSync(path.join(s.root, 'secret'), 0o000);
  const out = tmpDir(t, 'hf-smbacl-');
  await t.rejects(smbclientGet(s, 'secret', path.join(out, 'secret')), /NT_STATUS_ACCESS_DENIED/);
  const r = await smbclient(s, 'get other.txt -', { share: 'extra' });
  t.equal(r.code, 0);
  t.match(r.stdout, /in the extra share/);
  t.same((await smbclientListShares(s)).sort(), ['data', 'extra']);
  const put = await smbclient(s, `put "${path.join(extra, 'other.txt')}" uploaded.txt`);
  t.equal(put.code, 0, 'the share root is writable by the share user');
  t.equal(fs.statSync(path.join(s.root, 'uploaded.txt')).uid, Number(fs.statSync(s.root).uid), 'files are created as the share user');
  await t.rejects(startSamba(t, { profile: 'default', shares: { 'bad name': extra } }), /invalid extra share name/);
});
