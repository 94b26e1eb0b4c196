import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import ssh2 from 'ssh2';
import t, { type Test } from 'tap';

import { errorCode } from '../appliance/errors/index.ts';
import { CHANGED_DURING_READ, type ReadBuffers, type SourceStat, joinPath } from '../appliance/sources/index.ts';
import { SftpSource, type SftpOptions, hostKeyFingerprint } from '../appliance/sources/sftp/index.ts';
import { type Sshd, dropConnections, startSshd } from './helpers/sshd.ts';
import { tmpDir } from './helpers/tmp.ts';
import { bpath, makeOddTree, pseudoRandom, typeOf } from './helpers/tree.ts';

/** A non-root login, so that permissions apply (root reads everything). */
const TEST_USER = 'hf-sftp-test';

async function connect(t: Test, sshd: Sshd, extra: Partial<SftpOptions> = {}): Promise<SftpSource> {
  const src = await SftpSource.connect({
    host: sshd.host, port: sshd.port, user: sshd.user, identity: sshd.identityFile, hostKey: sshd.hostKeyFingerprint, ...extra,
  });
  t.teardown(() => src.close());
  return src;
}

async function readAll(src: SftpSource, p: Buffer, size: number, buffers?: ReadBuffers): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const piece of src.read(p, size, buffers)) parts.push(Buffer.from(piece));
  return Buffer.concat(parts);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** What SFTP v3 can carry of a local lstat: whole seconds as uint32, no ctime, inode, device or link count. */
function expectedStat(p: Buffer): SourceStat {
  const st = fs.lstatSync(p, { bigint: true });
  let sec = st.mtimeNs / 1_000_000_000n;
  if (st.mtimeNs % 1_000_000_000n < 0n) sec -= 1n;
  const mtime = [Number(BigInt.asUintN(32, sec)), 0] as const;
  return {
    type: typeOf(st) as SourceStat['type'],
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: Number(st.size),
    mtime,
    ctime: mtime,
    inode: 0,
    device: 0,
    links: 1,
    rdev: 0,
    target: st.isSymbolicLink() ? fs.readlinkSync(p, { encoding: 'buffer' }) : null,
  };
}

/** A lender of buffers that counts what was taken and given back. */
function countingBuffers(size: number): ReadBuffers & { out: number } {
  return {
    size,
    out: 0,
    get() {
      this.out++;
      return Buffer.allocUnsafe(size);
    },
    put() {
      this.out--;
    },
  };
}

t.test('list, stat and read of an odd tree give exactly the local bytes, names, modes, owners, targets and mtime seconds', async (t) => {
  const sshd = await startSshd(t);
  const root = path.join(tmpDir(t), 'tree');
  await makeOddTree(root);
  // what the task names on top: a self-loop, NFC and NFD side by side, a newline, spaces
  const extra = path.join(root, 'extra');
  fs.mkdirSync(extra);
  fs.symlinkSync('a', path.join(extra, 'a'));
  fs.writeFileSync(path.join(extra, 'caf\u00e9'), 'nfc');
  fs.writeFileSync(path.join(extra, 'cafe\u0301'), 'nfd');
  fs.writeFileSync(path.join(extra, 'two\nlines'), 'newline');
  fs.writeFileSync(path.join(extra, ' spaces  around '), 'spaces');
  fs.writeFileSync(path.join(extra, 'random-3m.bin'), pseudoRandom('3 MB', 3_000_000));
  fs.writeFileSync(path.join(extra, 'empty'), '');
  fs.symlinkSync(Buffer.from([0x2e, 0x2e, 0x2f, 0xc3, 0x28]), bpath(extra, Buffer.from([0x6c, 0xe9]))); // latin-1 name, bad UTF-8 target

  const src = await connect(t, sshd);
  t.equal(src.kind, 'sftp');
  t.equal(src.location, `sftp://root@127.0.0.1:${sshd.port}`);

  const files: { p: Buffer; size: number }[] = [];
  let entries = 0;
  const walk = async (dir: Buffer): Promise<void> => {
    const listing = await src.list(dir);
    t.same(listing.problems, [], `no problems listing ${dir.toString()}`);
    const local = fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare);
    t.same(listing.entries.map((e) => e.name.toString('hex')), local.map((n) => n.toString('hex')), `names of ${dir.toString()}, in byte order`);
    for (const e of listing.entries) {
      entries++;
      const p = joinPath(dir, e.name);
      const { name, ...stat } = e;
      const want = expectedStat(p);
      t.same(stat, want, `list entry of ${JSON.stringify(p.toString())}`);
      t.same(await src.stat(p), want, `stat of ${JSON.stringify(p.toString())}`);
      if (e.type === 'dir') await walk(p);
      if (e.type === 'file') files.push({ p, size: e.size });
    }
  };
  await walk(Buffer.from(root));
  t.ok(entries > 60 && files.length > 30, `walked ${entries} entries, ${files.length} files`);

  for (const f of files) {
    const got = await readAll(src, f.p, f.size);
    if (!got.equals(fs.readFileSync(f.p))) t.fail(`bytes of ${JSON.stringify(f.p.toString())}`);
  }
  t.pass(`read() gave the exact bytes of ${files.length} files`);

  // with lent buffers: pieces are views of them, and every buffer comes back
  const lender = countingBuffers(64 << 10);
  const big = bpath(extra, 'random-3m.bin');
  const parts: Buffer[] = [];
  for await (const piece of src.read(big, 3_000_000, lender)) {
    parts.push(Buffer.from(piece));
    lender.put(piece);
  }
  t.ok(parts.length >= 46 && parts.every((p) => p.length <= 64 << 10), `pieces fit the lent buffers (${parts.length} pieces)`);
  t.equal(sha256(Buffer.concat(parts)), sha256(fs.readFileSync(big)), 'read into lent buffers');
  t.equal(lender.out, 0, 'every lent buffer was given back');

  // readMany: the small files at once, each in its slot
  const small = files.filter((f) => f.size < 200_000);
  const into = Buffer.alloc(small.reduce((a, f) => a + f.size, 0));
  const results = await src.readMany(small.map((f) => f.p), small.map((f) => f.size), into);
  t.equal(results.length, small.length);
  results.forEach((r, i) => {
    if (!('data' in r) || !r.data.equals(fs.readFileSync(small[i]!.p))) t.fail(`readMany bytes of ${small[i]!.p.toString()}`);
  });
  t.pass(`readMany gave the exact bytes of ${small.length} files`);

  await t.rejects(readAll(src, bpath(extra, 'a'), 0), { code: 'ELOOP' }, 'read() of a symlink (here a loop) refuses to follow it');
  await t.rejects(readAll(src, bpath(root, 'links', 'relative'), 100_000), { code: 'ELOOP' }, 'read() of a symlink to a file refuses too');
  await t.rejects(readAll(src, bpath(root, 'special', 'fifo'), 0), { code: 'EINVAL' }, 'a FIFO is not opened (it would block the server)');
  await t.rejects(readAll(src, bpath(root, 'data'), 0), { code: 'EINVAL' }, 'a directory is not read');

  await src.close();
  await src.close();
  t.pass('close is idempotent');
  await t.rejects(src.stat(Buffer.from(root)), { code: 'HF_SOURCE_DISCONNECTED' }, 'a closed source says so');
});

t.test('read(): a file that grows while it is read is read to its end, then reported as changed; readMany says EFBIG', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t);
  const f = path.join(dir, 'growing.log');
  const first = pseudoRandom('grow', 3 << 20);
  fs.writeFileSync(f, first);
  fs.utimesSync(f, 1_700_000_000, 1_700_000_000);
  const src = await connect(t, sshd, { readAheadBytes: 1 << 20 });
  const parts: Buffer[] = [];
  let err: unknown = null;
  try {
    for await (const piece of src.read(Buffer.from(f), first.length)) {
      if (parts.length === 0) fs.appendFileSync(f, 'more bytes\n');
      parts.push(Buffer.from(piece));
    }
  } catch (e) {
    err = e;
  }
  t.equal(errorCode(err), CHANGED_DURING_READ, 'CHANGED_DURING_READ after the last byte');
  t.equal(Buffer.concat(parts).toString('hex'), fs.readFileSync(f).toString('hex'), 'every byte, the new ones too, was yielded first');

  const other = path.join(dir, 'other');
  fs.writeFileSync(other, 'unchanged');
  const out = await src.readMany([Buffer.from(f), Buffer.from(other)], [first.length, 9], Buffer.alloc(first.length + 9));
  t.equal('error' in out[0]! ? out[0].error.code : 'data', 'EFBIG', 'a file past its listed size is EFBIG (read it with read())');
  t.equal('data' in out[1]! ? out[1].data.toString() : 'error', 'unchanged', 'the others of the batch are read');
});

t.test('host keys: no pin, a wrong pin, known_hosts (plain, hashed, lists, wildcards, revoked)', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t);
  const base = { host: sshd.host, port: sshd.port, user: sshd.user, identity: sshd.identityFile };
  const line = fs.readFileSync(sshd.knownHostsFile, 'utf8').trim();
  const [, type, blob] = line.split(' ');
  t.equal(hostKeyFingerprint(Buffer.from(blob!, 'base64')), sshd.hostKeyFingerprint, 'fingerprints agree with ssh-keygen -lf');

  const unknown = await SftpSource.connect(base).then(() => null, (e: unknown) => e as Error & { code?: string });
  t.equal(unknown?.code, 'HF_SOURCE_HOST_KEY_UNKNOWN', 'no pin at all: refused');
  t.match(unknown?.message, sshd.hostKeyFingerprint, 'the message shows the server\'s fingerprint');
  t.match(unknown?.message, /ssh-ed25519/, 'and its key type');
  t.match(unknown?.message, `--host-key ${sshd.hostKeyFingerprint}`, 'and how to pin it');

  const wrong = `SHA256:${'A'.repeat(43)}`;
  const changed = await SftpSource.connect({ ...base, hostKey: wrong }).then(() => null, (e: unknown) => e as Error & { code?: string });
  t.equal(changed?.code, 'HF_SOURCE_HOST_KEY_CHANGED', 'a pin that does not match: refused');
  t.match(changed?.message, sshd.hostKeyFingerprint);
  t.match(changed?.message, wrong, 'and the pin it expected');
  await t.rejects(SftpSource.connect({ ...base, hostKey: 'SHA256:short' }), { code: 'HF_INVALID_ARGUMENT' }, 'a malformed pin');
  await t.rejects(SftpSource.connect({ ...base, knownHosts: path.join(dir, 'missing') }), { code: 'HF_INVALID_ARGUMENT' }, 'an unreadable known_hosts');

  const kh = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
  };
  const accepts = async (file: string, why: string) => {
    const src = await SftpSource.connect({ ...base, knownHosts: file });
    t.equal((await src.stat(Buffer.from('/'))).type, 'dir', why);
    await src.close();
  };
  await accepts(sshd.knownHostsFile, 'known_hosts "[127.0.0.1]:PORT type key"');
  await accepts(kh('list', `# comment\n\nother.example,[127.0.0.1]:${sshd.port} ${type} ${blob} comment\n`), 'a comma list of hosts');
  await accepts(kh('wild', `[127.0.0.?]:${sshd.port} ${type} ${blob}\n`), 'a wildcard pattern');
  const hashed = kh('hashed', `${line}\n`);
  execFileSync('ssh-keygen', ['-H', '-f', hashed], { stdio: 'ignore' });
  t.match(fs.readFileSync(hashed, 'utf8'), /^\|1\|/, 'ssh-keygen -H hashed the host name');
  await accepts(hashed, 'a hashed entry');
  await accepts(kh('mixed', `[127.0.0.1]:${sshd.port} ssh-ed25519 ${'AAAAC3NzaC1lZDI1NTE5AAAAI' + 'B'.repeat(43)}\n${line}\n`), 'any matching line of several');

  const refuses = async (file: string, code: string, why: string) => {
    await t.rejects(SftpSource.connect({ ...base, knownHosts: file }), { code }, why);
  };
  await refuses(kh('other-host', `other.example ${type} ${blob}\n`), 'HF_SOURCE_HOST_KEY_UNKNOWN', 'a known_hosts without this host');
  await refuses(kh('no-port', `127.0.0.1 ${type} ${blob}\n`), 'HF_SOURCE_HOST_KEY_UNKNOWN', 'a plain host name does not pin a port other than 22');
  await refuses(kh('negated', `[127.0.0.*]:${sshd.port},![127.0.0.1]:${sshd.port} ${type} ${blob}\n`), 'HF_SOURCE_HOST_KEY_UNKNOWN', 'a negated pattern excludes');
  const otherKey = path.join(dir, 'other_key');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherKey]);
  const otherBlob = fs.readFileSync(`${otherKey}.pub`, 'utf8').split(' ')[1];
  await refuses(kh('changed', `[127.0.0.1]:${sshd.port} ssh-ed25519 ${otherBlob}\n`), 'HF_SOURCE_HOST_KEY_CHANGED', 'known_hosts pins another key');
  await refuses(kh('revoked', `@revoked * ${type} ${blob}\n${line}\n`), 'HF_SOURCE_HOST_KEY_CHANGED', 'a @revoked key is refused even when pinned');
});

t.test('a wrong key is HF_SOURCE_AUTH_FAILED; a closed port is HF_SOURCE_UNREACHABLE naming host:port', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t);
  const stranger = path.join(dir, 'stranger');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]);
  const base = { host: sshd.host, port: sshd.port, user: sshd.user, hostKey: sshd.hostKeyFingerprint };
  await t.rejects(SftpSource.connect({ ...base, identity: stranger }), { code: 'HF_SOURCE_AUTH_FAILED' }, 'a key the server does not know');
  await t.rejects(SftpSource.connect({ ...base, identity: fs.readFileSync(stranger) }), { code: 'HF_SOURCE_AUTH_FAILED' }, 'the same, key given as contents');
  await t.rejects(SftpSource.connect({ ...base, identity: `${stranger}.pub` }), { code: 'HF_INVALID_ARGUMENT' }, 'a public key is not an identity');
  await t.rejects(SftpSource.connect({ ...base, identity: path.join(dir, 'nope') }), { code: 'HF_INVALID_ARGUMENT' }, 'a missing key file');
  const locked = path.join(dir, 'locked');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'secret words', '-f', locked]);
  await t.rejects(SftpSource.connect({ ...base, identity: locked, passphrase: 'wrong' }), { code: 'HF_INVALID_ARGUMENT' }, 'a wrong passphrase');

  const port = sshd.port;
  await sshd.stop();
  const err = await SftpSource.connect({ ...base, identity: sshd.identityFile }).then(() => null, (e: unknown) => e as Error & { code?: string });
  t.equal(err?.code, 'HF_SOURCE_UNREACHABLE', 'nothing listens');
  t.match(err?.message, `127.0.0.1:${port}`, 'the message names host:port');
  t.match(err?.message, /refused/);
});

t.test('a connection dropped in the middle of a 64 MB file: the read resumes and the bytes are identical', async (t) => {
  const sshd = await startSshd(t);
  const dir = tmpDir(t);
  const f = path.join(dir, 'big.bin');
  const data = pseudoRandom('64 MB', 64 << 20);
  fs.writeFileSync(f, data);
  const src = await connect(t, sshd, { backoffMs: 50 });
  const h = createHash('sha256');
  let got = 0;
  let killed = 0;
  for await (const piece of src.read(Buffer.from(f), data.length)) {
    h.update(piece);
    got += piece.length;
    if (killed === 0 && got >= 16 << 20) killed = dropConnections(sshd);
  }
  t.ok(killed > 0, `the server's connection processes were killed (${killed})`);
  t.equal(got, data.length, 'every byte came');
  t.equal(h.digest('hex'), sha256(data), 'sha256 equal: nothing lost, nothing repeated');
  const logins = (fs.readFileSync(path.join(sshd.dir, 'sshd.log'), 'utf8').match(/Accepted publickey/g) ?? []).length;
  t.equal(logins, 2, 'it logged in again once');

  // several reads share one reconnect
  const reads = Array.from({ length: 4 }, async (_, k) => {
    const hk = createHash('sha256');
    let n = 0;
    for await (const piece of src.read(Buffer.from(f), data.length)) {
      hk.update(piece);
      n += piece.length;
      if (k === 0 && n >= 8 << 20 && n - piece.length < 8 << 20) dropConnections(sshd);
    }
    return hk.digest('hex');
  });
  t.same(await Promise.all(reads), Array(4).fill(sha256(data)), 'four reads at once through a drop: all identical');
  const logins2 = (fs.readFileSync(path.join(sshd.dir, 'sshd.log'), 'utf8').match(/Accepted publickey/g) ?? []).length;
  t.equal(logins2, 3, 'and they shared one reconnect');

  dropConnections(sshd);
  t.equal((await src.stat(Buffer.from(f))).size, data.length, 'stat reconnects too');
  dropConnections(sshd);
  t.ok((await src.list(Buffer.from(dir))).entries.some((e) => e.name.toString() === 'big.bin'), 'and list');
  dropConnections(sshd);
  const out = await src.readMany([Buffer.from(f)], [1 << 20], Buffer.alloc(1 << 20));
  t.equal('error' in out[0]! ? out[0].error.code : '', 'EFBIG', 'and readMany (whose answer here is EFBIG: listed smaller)');

  // the server goes away for good: the read gives up with HF_SOURCE_DISCONNECTED
  const doomed = await connect(t, sshd, { retries: 2, backoffMs: 20 });
  let seen = 0;
  const reading = (async () => {
    for await (const piece of doomed.read(Buffer.from(f), data.length)) {
      seen += piece.length;
      if (seen >= 8 << 20 && seen - piece.length < 8 << 20) await sshd.stop();
    }
  })();
  await t.rejects(reading, { code: 'HF_SOURCE_DISCONNECTED' }, 'retries exhausted');
  t.ok(seen < data.length, 'it stopped short of the end');
});

t.test('a missing path is ENOENT; an unreadable file or directory is EACCES (as a non-root login)', async (t) => {
  const sshd = await startSshd(t, { user: TEST_USER });
  const root = tmpDir(t);
  fs.chmodSync(root, 0o755);
  const secret = path.join(root, 'secret');
  fs.writeFileSync(secret, 'no one may read this');
  fs.chmodSync(secret, 0o000);
  const closed = path.join(root, 'closed-dir');
  fs.mkdirSync(closed, { mode: 0o700 });
  fs.writeFileSync(path.join(closed, 'inside'), 'x');
  const open = path.join(root, 'open');
  fs.writeFileSync(open, 'anyone may read this');
  fs.chmodSync(open, 0o644);
  const src = await connect(t, sshd);
  t.equal(src.location, `sftp://${TEST_USER}@127.0.0.1:${sshd.port}`);

  const missing = Buffer.from(path.join(root, 'missing'));
  await t.rejects(src.stat(missing), { code: 'ENOENT' }, 'stat');
  await t.rejects(src.list(missing), { code: 'ENOENT' }, 'list');
  await t.rejects(readAll(src, missing, 10), { code: 'ENOENT' }, 'read');
  const err = await src.stat(missing).then(() => null, (e: unknown) => e as Error);
  t.match(err?.message, path.join(root, 'missing'), 'the message names the path');
  t.ok(err?.cause, 'the SFTP status is kept as cause');

  t.equal((await src.stat(Buffer.from(secret))).mode, 0, 'an unreadable file can still be examined');
  await t.rejects(readAll(src, Buffer.from(secret), 20), { code: 'EACCES' }, 'but not read');
  await t.rejects(src.list(Buffer.from(closed)), { code: 'EACCES' }, 'a directory of another user with mode 700');
  const out = await src.readMany([Buffer.from(secret), Buffer.from(open)], [20, 20], Buffer.alloc(40));
  t.equal('error' in out[0]! ? out[0].error.code : '', 'EACCES', 'readMany: per file');
  t.equal('data' in out[1]! ? out[1].data.toString() : '', 'anyone may read this');
  t.equal((await readAll(src, Buffer.from(open), 20)).toString(), 'anyone may read this', 'a readable file reads');
});

t.test('a malformed SFTP packet ends the connection with HF_SOURCE_PROTOCOL; the call is retried on new connections, then fails with it', async (t) => {
  // A scripted SSH server (ssh2's): a proper VERSION, then a packet too
  // short to be SFTP in answer to anything.
  const hostKey = ssh2.utils.generateKeyPairSync('ed25519');
  const userKey = ssh2.utils.generateKeyPairSync('ed25519');
  let channels = 0;
  const server = new ssh2.Server({ hostKeys: [hostKey.private] }, (client) => {
    client.on('error', () => undefined);
    client.on('authentication', (ctx) => ctx.accept());
    client.on('ready', () => client.on('session', (accept) => {
      accept().on('subsystem', (accept) => {
        const ch = accept();
        channels++;
        let buf = Buffer.alloc(0);
        ch.on('data', (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
            const type = buf[4];
            buf = buf.subarray(4 + buf.readUInt32BE(0));
            ch.write(type === 1 ? Buffer.from([0, 0, 0, 5, 2, 0, 0, 0, 3]) : Buffer.from([0, 0, 0, 2, 101, 0, 0, 0, 7]));
          }
        });
      });
    }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as { port: number }).port;
  const blob = (ssh2.utils.parseKey(hostKey.public) as ssh2.ParsedKey).getPublicSSH();
  const src = await SftpSource.connect({
    host: '127.0.0.1', port, user: 'x', identity: Buffer.from(userKey.private), hostKey: hostKeyFingerprint(blob), retries: 2, backoffMs: 10,
  });
  t.teardown(() => src.close());
  await t.rejects(src.stat(Buffer.from('/x')), { code: 'HF_SOURCE_PROTOCOL', message: /malformed packet/ },
    'the malformed packet is named as such, not as a dropped connection');
  t.equal(channels, 3, 'tried on the first connection and two new ones (retries: 2)');
  await t.rejects(src.list(Buffer.from('/')), { code: 'HF_SOURCE_PROTOCOL' }, 'a server that answers is not given up on: the next call tries again');
});

t.test('test helper: a test process killed by SIGKILL leaves no sshd behind (the lifeline)', async (t) => {
  const helper = new URL('./helpers/sshd.ts', import.meta.url).href;
  // A test process that starts sshd and then hangs until it is killed.
  const script = `import { startSshd } from ${JSON.stringify(helper)};
const s = await startSshd({ teardown() {} });
process.stdout.write(JSON.stringify({ pid: s.pid, dir: s.dir }) + '\\n');
setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const started = await new Promise<{ pid: number; dir: string }>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(JSON.parse(out));
    });
    child.once('exit', (code) => reject(new Error(`the helper process exited (${code}) before sshd was up`)));
  });
  t.teardown(() => fs.rmSync(started.dir, { recursive: true, force: true }));
  const alive = (pid: number) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
      return stat[stat.lastIndexOf(')') + 2] !== 'Z';
    } catch {
      return false;
    }
  };
  t.ok(alive(started.pid), 'sshd runs');
  child.kill('SIGKILL');
  const until = Date.now() + 5000;
  while (alive(started.pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
  t.notOk(alive(started.pid), 'sshd is gone once the process that started it was killed (no exit hook ran)');
});
