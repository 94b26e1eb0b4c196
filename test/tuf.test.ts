// The release channel end to end: the vendor's TUF repository
// (update-channel/tuf) served over real HTTP, and the box's ReleaseFetcher
// (tuf-js) refreshing and downloading from it. The server can tamper with any
// response, as an attacker between the box and the fleet (or a broken mirror)
// could: each attack is refused with a coded error and leaves nothing behind.
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';

import t, { type Test } from 'tap';

import { ReleaseFetcher } from '../appliance/agent/release-fetcher.ts';
import {
  type Channel, initTufRepository, listReleases, publishRelease, refreshTimestamp, rotateRootKeys,
} from '../update-channel/tuf/index.ts';
import { tmpDir } from './helpers/tmp.ts';

interface Served {
  kind: 'metadata' | 'targets';
  /** Path under metadata/ or targets/, e.g. `3.snapshot.json`. */
  name: string;
  /** The file's bytes in the repository, null when there is none. */
  body: Buffer | null;
}

/** Answers the request itself (returns true) or lets the repository's file be served (false). */
type Tamper = (req: http.IncomingMessage, res: http.ServerResponse, file: Served) => boolean | Promise<boolean>;

/** Serves `repoDir/metadata` at /tuf/metadata/ and `repoDir/targets` at /tuf/targets/ (with Range), on 127.0.0.1. */
async function startServer(t: Test, repoDir: string) {
  const requests: { path: string; range: string | undefined }[] = [];
  let tamper: Tamper | undefined;
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    void (async () => {
      const pathname = new URL(req.url ?? '/', 'http://localhost').pathname;
      requests.push({ path: pathname, range: req.headers.range });
      const m = /^\/tuf\/(metadata|targets)\/(.+)$/.exec(pathname);
      const name = m ? decodeURIComponent(m[2] ?? '') : '';
      if (!m || name.split('/').includes('..')) {
        res.writeHead(404).end();
        return;
      }
      const kind = m[1] as Served['kind'];
      let body: Buffer | null = null;
      try {
        body = fs.readFileSync(path.join(repoDir, kind, name));
      } catch {
        body = null;
      }
      if (tamper && (await tamper(req, res, { kind, name, body }))) return;
      if (!body) res.writeHead(404).end();
      else serveBytes(req, res, body);
    })();
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/tuf/`;
  return {
    metadataUrl: `${base}metadata/`,
    targetsUrl: `${base}targets/`,
    requests,
    tamper(fn: Tamper | undefined) {
      tamper = fn;
    },
  };
}

function serveBytes(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void {
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (!range) {
    res.writeHead(200, { 'content-length': body.length }).end(body);
    return;
  }
  const start = Number(range[1]);
  if (start >= body.length) {
    res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
    return;
  }
  res.writeHead(206, { 'content-length': body.length - start, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` });
  res.end(body.subarray(start));
}

/** A repository with its server, and a way to make boxes (each with its own cache) that trust its first root. */
async function setup(t: Test, opts: { timestampExpiresInSeconds?: number } = {}) {
  const dir = tmpDir(t, 'hf-tuf-');
  const repoDir = path.join(dir, 'repo');
  const offlineKeysDir = path.join(dir, 'offline-keys');
  const init = await initTufRepository({ repoDir, offlineKeysDir, ...opts });
  const server = await startServer(t, repoDir);
  let bundles = 0;
  return {
    dir,
    repoDir,
    offlineKeysDir,
    init,
    server,
    /** A release bundle of random bytes. */
    bundle(size = 300_000): { file: string; bytes: Buffer; sha256: string } {
      const file = path.join(dir, `bundle-${++bundles}.tar.gz`);
      const bytes = randomBytes(size);
      fs.writeFileSync(file, bytes);
      return { file, bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
    },
    publish(bundle: { file: string }, version: string, extra: { channel?: Channel; now?: Date } = {}) {
      return publishRelease({ repoDir, offlineKeysDir, bundleFile: bundle.file, channel: extra.channel ?? 'stable', version, now: extra.now });
    },
    /** A box: its cache directory (created with the provisioned root on first use) and fetcher. */
    box(name = 'box') {
      const cacheDir = path.join(dir, name, 'tuf');
      const fetcher = new ReleaseFetcher({ metadataUrl: server.metadataUrl, targetsUrl: server.targetsUrl, cacheDir, initialRoot: init.root });
      return { cacheDir, fetcher, downloads: path.join(dir, name) };
    },
    metadata(name: string): Buffer {
      return fs.readFileSync(path.join(repoDir, 'metadata', name));
    },
  };
}

/** The version of a role's metadata a box trusts, null when it has none. */
function cachedVersion(cacheDir: string, role: string): number | null {
  try {
    return (JSON.parse(fs.readFileSync(path.join(cacheDir, `${role}.json`), 'utf8')) as { signed: { version: number } }).signed.version;
  } catch {
    return null;
  }
}

const exists = (file: string) => fs.existsSync(file);

function drainedOrClosed(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

t.test('publish v1 then v2: a box finds both with their signed length and sha256 and downloads v2 byte-identical', async (t) => {
  const s = await setup(t);
  const b1 = s.bundle();
  const b2 = s.bundle(400_000);
  const p1 = await s.publish(b1, '1.0.0');
  const p2 = await s.publish(b2, '2.0.0');
  t.same(p2.versions, { root: 1, targets: 3, snapshot: 3, timestamp: 3 }, 'each publish signs a new targets, snapshot and timestamp');
  t.same(await listReleases(s.repoDir), [p1.release, p2.release], 'listReleases reads the signed targets');
  t.ok(exists(path.join(s.repoDir, 'targets', 'stable', `${b2.sha256}.holdfast-2.0.0.tar.gz`)), 'targets carry consistent-snapshot names');

  const box = s.box();
  const v1 = await box.fetcher.find('stable', '1.0.0');
  t.match(v1, { channel: 'stable', version: '1.0.0', path: 'stable/holdfast-1.0.0.tar.gz', length: b1.bytes.length, sha256: b1.sha256 });
  const v2 = await box.fetcher.find('stable', '2.0.0');
  t.match(v2, { version: '2.0.0', length: b2.bytes.length, sha256: b2.sha256 });
  t.same(v2.targetFile.custom, { channel: 'stable', version: '2.0.0' }, 'custom metadata names channel and version');
  t.ok(v2.targetFile.hashes.sha512, 'the target carries a sha512 too, checked on download');
  t.equal(cachedVersion(box.cacheDir, 'timestamp'), 3, 'the box trusts timestamp version 3 now');
  const fetched = s.server.requests.map((r) => r.path);
  t.ok(fetched.includes('/tuf/metadata/2.root.json'), 'the box looked for a newer root');
  t.ok(fetched.includes('/tuf/metadata/3.snapshot.json') && fetched.includes('/tuf/metadata/3.targets.json'), 'and fetched versioned snapshot and targets');

  const dest = path.join(box.downloads, 'holdfast-2.0.0.tar.gz');
  await box.fetcher.download(v2, dest);
  t.ok(fs.readFileSync(dest).equals(b2.bytes), 'v2 downloaded byte-identical');
  t.notOk(exists(`${dest}.part`), 'no .part left');
  t.ok(fetched.length < s.server.requests.length && s.server.requests.at(-1)?.path === `/tuf/targets/stable/${b2.sha256}.holdfast-2.0.0.tar.gz`,
    'the bundle was fetched by its consistent-snapshot name');

  await t.rejects(box.fetcher.find('stable', '3.0.0'), { code: 'HF_UPDATE_NOT_FOUND' }, 'an unpublished version is not found');
  await t.rejects(box.fetcher.find('beta', '2.0.0'), { code: 'HF_UPDATE_NOT_FOUND' }, 'nor a version of another channel');
  await t.rejects(box.fetcher.find('stable', '2.0'), { code: 'HF_INVALID_ARGUMENT' }, 'a malformed version is refused before any request');
});

t.test('the vendor side refuses what would break the channel', async (t) => {
  const s = await setup(t);
  await t.rejects(initTufRepository({ repoDir: s.repoDir, offlineKeysDir: path.join(s.dir, 'other-keys') }), { code: 'HF_REPO_EXISTS' },
    'an existing repository is not overwritten');
  await t.rejects(initTufRepository({ repoDir: path.join(s.dir, 'other-repo'), offlineKeysDir: s.offlineKeysDir }), { code: 'HF_REPO_EXISTS' },
    'nor an offline key directory that holds keys');
  await t.rejects(initTufRepository({ repoDir: path.join(s.dir, 'r2'), offlineKeysDir: path.join(s.dir, 'r2', 'keys-offline') }),
    { code: 'HF_INVALID_ARGUMENT', message: /inside repoDir/ }, 'offline keys inside the served repository are refused');
  const b1 = s.bundle(1000);
  await s.publish(b1, '1.0.0');
  t.equal((await s.publish(b1, '1.0.0')).unchanged, true, 'publishing the same bytes again changes nothing');
  await t.rejects(s.publish(s.bundle(1000), '1.0.0'), { code: 'HF_CONFLICT' }, 'other bytes under a published version are refused');
  t.equal(fs.readdirSync(path.join(s.repoDir, 'targets', 'stable')).length, 1, 'and the refused bundle is not left in targets/');
  for (const bad of ['1.0', 'v1.0.0', '1.0.0-', '1.0.0/../x', '1.0.0 ']) {
    await t.rejects(s.publish(b1, bad), { code: 'HF_INVALID_ARGUMENT' }, `version ${JSON.stringify(bad)} is refused`);
  }
  await t.rejects(s.publish(b1, '1.0.1', { channel: 'nightly' as Channel }), { code: 'HF_INVALID_ARGUMENT' }, 'an unknown channel is refused');
  await t.rejects(publishRelease({ repoDir: s.repoDir, offlineKeysDir: path.join(s.dir, 'empty'), bundleFile: b1.file, channel: 'stable', version: '1.0.1' }),
    { code: 'HF_PKI_NOT_FOUND', message: /targets keys/ }, 'publishing without the offline targets key is refused');
  for (const f of ['offline-keys', 'repo/keys']) {
    for (const name of fs.readdirSync(path.join(s.dir, f)).filter((n) => n.endsWith('.pem'))) {
      t.equal(fs.statSync(path.join(s.dir, f, name)).mode & 0o777, 0o600, `${f}/${name} is mode 0600`);
    }
  }
  const offline = fs.readdirSync(s.offlineKeysDir).filter((n) => n.endsWith('.pem'));
  const online = fs.readdirSync(path.join(s.repoDir, 'keys')).filter((n) => n.endsWith('.pem'));
  t.same(offline.map((n) => n.split('-')[0]).sort(), ['root', 'root', 'root', 'targets'], 'root and targets keys are offline');
  t.same(online.map((n) => n.split('-')[0]).sort(), ['snapshot', 'timestamp'], 'only snapshot and timestamp keys are online');
  const root = JSON.parse(s.metadata('root.json').toString()) as { signed: { roles: Record<string, { keyids: string[]; threshold: number }> } };
  t.same(root.signed.roles.root?.threshold, 2, 'root threshold 2');
  t.equal(root.signed.roles.root?.keyids.length, 3, 'of 3 root keys');
  t.same(fs.readdirSync(s.repoDir).filter((n) => n.includes('.tmp-') || n === '.lock'), [], 'no temporary or lock files left');
});

t.test('rollback attack: a box that has seen newer metadata refuses older, validly signed metadata', async (t) => {
  const s = await setup(t);
  await s.publish(s.bundle(), '1.0.0');
  // The attacker keeps the channel as it was before 2.0.0 (a security fix, say).
  const oldTimestamp = s.metadata('timestamp.json');
  await s.publish(s.bundle(), '2.0.0');

  const box = s.box();
  await box.fetcher.find('stable', '2.0.0');
  t.equal(cachedVersion(box.cacheDir, 'timestamp'), 3, 'the box has seen timestamp 3 (snapshot 3, with 2.0.0)');

  // Old timestamp.json; it names 2.snapshot.json, which names 2.targets.json: all signed, none expired.
  s.server.tamper((_req, res, f) => f.kind === 'metadata' && f.name === 'timestamp.json' && !!res.writeHead(200).end(oldTimestamp));
  const rebooted = new ReleaseFetcher({ metadataUrl: s.server.metadataUrl, targetsUrl: s.server.targetsUrl, cacheDir: box.cacheDir });
  await t.rejects(rebooted.find('stable', '2.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'rollback' }, message: /older than/ },
    'the old channel is refused, not read as "2.0.0 does not exist"');
  await t.rejects(rebooted.find('stable', '1.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'rollback' } },
    'and nothing is offered from it, not even 1.0.0');
  t.equal(cachedVersion(box.cacheDir, 'timestamp'), 3, 'the box still trusts timestamp 3');
  t.equal(cachedVersion(box.cacheDir, 'snapshot'), 3, 'and snapshot 3');

  // What the refusal protects: a box with no history cannot tell, and 2.0.0 is hidden from it.
  const fresh = s.box('fresh');
  await t.rejects(fresh.fetcher.find('stable', '2.0.0'), { code: 'HF_UPDATE_NOT_FOUND' }, 'a new box served the old channel does not see 2.0.0');
  t.notOk(s.server.requests.some((r) => r.path.startsWith('/tuf/targets/')), 'no bundle was downloaded');
});

t.test('freeze attack: an expired timestamp is refused', async (t) => {
  const s = await setup(t);
  // The channel as it was two days ago, replayed: its timestamp expired a day ago.
  await s.publish(s.bundle(), '1.0.0', { now: new Date(Date.now() - 2 * 86_400_000) });
  const frozen = s.metadata('timestamp.json');
  await s.publish(s.bundle(), '2.0.0');

  s.server.tamper((_req, res, f) => f.kind === 'metadata' && f.name === 'timestamp.json' && !!res.writeHead(200).end(frozen));
  const box = s.box();
  await t.rejects(box.fetcher.find('stable', '1.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'expired' }, message: /timestamp\.json is expired/ },
    'the frozen channel is refused');
  t.equal(cachedVersion(box.cacheDir, 'timestamp'), null, 'the expired timestamp was not kept');
  t.equal(cachedVersion(box.cacheDir, 'root'), 1, 'the box still has its provisioned root');
  t.notOk(exists(path.join(box.cacheDir, 'refresh')), 'no work directory left');

  s.server.tamper(undefined);
  t.equal((await box.fetcher.find('stable', '2.0.0')).version, '2.0.0', 'the live channel is accepted by the same box');

  // A timestamp signed with a short validity (as the server's timer would, with seconds) runs out too.
  await refreshTimestamp({ repoDir: s.repoDir, expiresInSeconds: 1 });
  await new Promise((resolve) => setTimeout(resolve, 2100));
  await t.rejects(box.fetcher.find('stable', '2.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'expired' } },
    'a timestamp the server did not refresh in time is refused');
  t.equal(cachedVersion(box.cacheDir, 'timestamp'), 3, 'the box keeps the last timestamp that verified');
});

t.test('mix-and-match: targets or snapshot of one publish with the metadata of another is refused', async (t) => {
  const s = await setup(t);
  await s.publish(s.bundle(), '1.0.0');
  await s.publish(s.bundle(), '2.0.0');
  const box = s.box();

  // 3.snapshot.json names 3.targets.json (with 2.0.0) by version, length and hash; serve 2.targets.json's bytes instead.
  const oldTargets = s.metadata('2.targets.json');
  s.server.tamper((_req, res, f) => f.name === '3.targets.json' && !!res.writeHead(200).end(oldTargets));
  await t.rejects(box.fetcher.find('stable', '1.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'mismatch' } },
    'targets from the first publish under the second snapshot are refused');
  t.equal(cachedVersion(box.cacheDir, 'targets'), null, 'no targets trusted');
  t.equal(cachedVersion(box.cacheDir, 'timestamp'), null, 'nor, from the refused refresh, the timestamp');

  const oldSnapshot = s.metadata('2.snapshot.json');
  s.server.tamper((_req, res, f) => f.name === '3.snapshot.json' && !!res.writeHead(200).end(oldSnapshot));
  await t.rejects(box.fetcher.find('stable', '1.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'mismatch' } },
    'a snapshot from the first publish under the second timestamp is refused');
  t.equal(cachedVersion(box.cacheDir, 'snapshot'), null, 'no snapshot trusted');

  s.server.tamper(undefined);
  t.equal((await box.fetcher.find('stable', '2.0.0')).version, '2.0.0', 'the consistent channel is accepted');
});

t.test('tampered bundle bytes (same length, one byte flipped) fail verification and nothing is kept', async (t) => {
  const s = await setup(t);
  const b = s.bundle();
  await s.publish(b, '1.0.0');
  const box = s.box();
  const info = await box.fetcher.find('stable', '1.0.0');
  s.server.tamper((_req, res, f) => {
    if (f.kind !== 'targets' || !f.body) return false;
    const body = Buffer.from(f.body);
    body[123_456] = (body[123_456] ?? 0) ^ 0x01;
    res.writeHead(200, { 'content-length': body.length }).end(body);
    return true;
  });
  const dest = path.join(box.downloads, 'holdfast-1.0.0.tar.gz');
  await t.rejects(box.fetcher.download(info, dest), { code: 'HF_UPDATE_VERIFY', message: /hash/ }, 'the flipped byte is caught');
  t.notOk(exists(`${dest}.part`), 'the .part is deleted');
  t.notOk(exists(dest), 'nothing is installed');
});

t.test('a bundle longer than its signed length: reading stops at the length, nothing beyond it is written', async (t) => {
  const s = await setup(t);
  const b = s.bundle();
  await s.publish(b, '1.0.0');
  const box = s.box();
  const info = await box.fetcher.find('stable', '1.0.0');
  const cap = 64 * 1024 * 1024;
  let sent = 0;
  let hungUp = false;
  s.server.tamper(async (_req, res, f) => {
    if (f.kind !== 'targets' || !f.body) return false;
    // The real bytes, then data without end (up to `cap`, so a broken client fails the test rather than the disk).
    let closed = false;
    res.once('close', () => { closed = true; });
    res.writeHead(200); // chunked: no length for the client to trust
    res.write(f.body);
    sent = f.body.length;
    const junk = randomBytes(64 * 1024);
    while (sent < cap && !closed) {
      sent += junk.length;
      if (!res.write(junk)) await drainedOrClosed(res);
    }
    hungUp = closed;
    res.end();
    return true;
  });
  const dest = path.join(box.downloads, 'holdfast-1.0.0.tar.gz');
  let largestPart = 0;
  await t.rejects(box.fetcher.download(info, dest, {
    onProgress: () => { largestPart = Math.max(largestPart, fs.statSync(`${dest}.part`).size); },
  }), { code: 'HF_UPDATE_VERIFY', message: /more than the \d+ bytes/ }, 'the extra bytes are refused');
  await t.resolveMatch((async () => {
    while (!hungUp && sent < cap) await new Promise((resolve) => setTimeout(resolve, 20));
    return hungUp;
  })(), true, 'the box hung up on the endless response');
  t.ok(sent < cap, `the server could send only ${sent} of ${cap} bytes before the box hung up`);
  t.ok(largestPart > 0 && largestPart <= info.length, `the .part never held more than the signed length (${largestPart} <= ${info.length})`);
  t.notOk(exists(`${dest}.part`), 'the .part is deleted');
  t.notOk(exists(dest), 'nothing is installed');
});

t.test('signatures below threshold: a new root signed by too few root keys is refused', async (t) => {
  const s = await setup(t);
  await s.publish(s.bundle(), '1.0.0');
  const rotated = await rotateRootKeys({ repoDir: s.repoDir, offlineKeysDir: s.offlineKeysDir, replace: 1 });
  const oldIds = s.init.keyIds.root;
  const newIds = rotated.rootKeyIds;
  const kept = oldIds.filter((id) => newIds.includes(id));
  const added = newIds.filter((id) => !oldIds.includes(id));
  const dropped = oldIds.filter((id) => !newIds.includes(id));
  t.equal(kept.length, 2, 'replace: 1 keeps two of the three root keys');
  const root2 = JSON.parse(s.metadata('2.root.json').toString()) as { signatures: { keyid: string }[]; signed: unknown };
  t.same(root2.signatures.map((x) => x.keyid).sort(), [...oldIds, ...added].sort(), '2.root.json is signed by the old keys and the new');

  const signedOnlyBy = (ids: string[]) => Buffer.from(JSON.stringify({ ...root2, signatures: root2.signatures.filter((x) => ids.includes(x.keyid)) }));
  const cases = [
    // 1 of the 2 old root keys needed (TUF 5.3.4: the trusted root must vouch for the next one).
    { what: 'one old root key (and the new ones)', ids: [kept[0] ?? '', ...added] },
    // 1 of the 2 new root keys needed (the new root must vouch for itself): the kept key plus the dropped one.
    { what: 'two old root keys but only one of the new root\'s', ids: [kept[0] ?? '', ...dropped] },
  ];
  for (const [i, c] of cases.entries()) {
    s.server.tamper((_req, res, f) => f.name === '2.root.json' && !!res.writeHead(200).end(signedOnlyBy(c.ids)));
    const box = s.box(`box-${i}`);
    await t.rejects(box.fetcher.find('stable', '1.0.0'), { code: 'HF_UPDATE_METADATA', details: { reason: 'signature' }, message: /root was signed by 1\/2 keys/ },
      `a root v2 signed by ${c.what} is refused`);
    t.equal(cachedVersion(box.cacheDir, 'root'), 1, 'the box still trusts root v1 only');
    t.equal(cachedVersion(box.cacheDir, 'timestamp'), null, 'and trusted nothing else');
  }
  s.server.tamper(undefined);
  const box = s.box('honest');
  await box.fetcher.find('stable', '1.0.0');
  t.equal(cachedVersion(box.cacheDir, 'root'), 2, 'the properly signed root v2 is accepted');
});

t.test('root key rotation: a box that trusts only root v1 follows to the new root and finds a release published after it', async (t) => {
  const s = await setup(t);
  await s.publish(s.bundle(), '1.0.0');
  const before = s.box('before');
  await before.fetcher.find('stable', '1.0.0');

  const rotated = await rotateRootKeys({ repoDir: s.repoDir, offlineKeysDir: s.offlineKeysDir, replace: 2, rotateTimestampKey: true });
  t.equal(rotated.version, 2, 'root version 2');
  t.equal(rotated.replaced.length, 2, 'two root keys replaced');
  t.equal(rotated.retired.length, 3, 'the two root keys and the timestamp key are retired');
  for (const file of rotated.retired) t.ok(exists(file) && file.includes(`${path.sep}retired${path.sep}`), `${path.basename(file)} moved aside, not deleted`);
  t.notSame(rotated.timestampKeyIds, s.init.keyIds.timestamp, 'a new timestamp key');
  t.ok(s.metadata('root.json').equals(s.metadata('2.root.json')), 'root.json is the newest root');

  const b3 = s.bundle();
  const p3 = await s.publish(b3, '3.0.0');
  t.equal(p3.versions.root, 2, 'v3 is published under root v2');
  await refreshTimestamp({ repoDir: s.repoDir }); // signed by the new timestamp key only

  const box = s.box('new');
  const info = await box.fetcher.find('stable', '3.0.0');
  t.match(info, { version: '3.0.0', sha256: b3.sha256 }, 'a box provisioned with root v1 finds 3.0.0');
  t.equal(cachedVersion(box.cacheDir, 'root'), 2, 'and now trusts root v2');
  t.ok(s.server.requests.some((r) => r.path === '/tuf/metadata/3.root.json'), 'it looked for root v3 (404: none)');
  const dest = path.join(box.downloads, 'holdfast-3.0.0.tar.gz');
  await box.fetcher.download(info, dest);
  t.ok(fs.readFileSync(dest).equals(b3.bytes), '3.0.0 downloaded byte-identical');

  t.equal((await before.fetcher.find('stable', '3.0.0')).sha256, b3.sha256, 'a box that cached metadata under root v1 follows too');
  t.equal(cachedVersion(before.cacheDir, 'root'), 2);

  const again = await rotateRootKeys({ repoDir: s.repoDir, offlineKeysDir: s.offlineKeysDir, replace: 0 });
  t.same(again.rootKeyIds, rotated.rootKeyIds, 'replace: 0 renews the root with the same keys');
  t.equal((await box.fetcher.find('stable', '3.0.0')).version, '3.0.0');
  t.equal(cachedVersion(box.cacheDir, 'root'), 3, 'root v3 followed');
});

t.test('resumable download: a connection cut half-way leaves a .part, the next download asks for the rest', async (t) => {
  const s = await setup(t);
  const b = s.bundle(400_000);
  await s.publish(b, '1.0.0');
  const box = s.box();
  const info = await box.fetcher.find('stable', '1.0.0');
  const dest = path.join(box.downloads, 'holdfast-1.0.0.tar.gz');
  const half = Math.floor(b.bytes.length / 2);
  s.server.tamper((_req, res, f) => {
    if (f.kind !== 'targets' || !f.body) return false;
    res.writeHead(200, { 'content-length': f.body.length });
    res.write(f.body.subarray(0, half), () => res.socket?.destroy());
    return true;
  });
  await t.rejects(box.fetcher.download(info, dest), { code: 'HF_FLEET_UNREACHABLE', message: /cut off.*resumes/ }, 'the cut is a coded error');
  t.notOk(exists(dest), 'nothing installed');
  const have = fs.statSync(`${dest}.part`).size;
  t.ok(have > 0 && have <= half, `the .part keeps the ${have} bytes received`);
  t.ok(fs.readFileSync(`${dest}.part`).equals(b.bytes.subarray(0, have)), 'and they are the first bytes of the bundle');

  s.server.tamper(undefined);
  const before = s.server.requests.length;
  let last = 0;
  await box.fetcher.download(info, dest, { onProgress: (bytes) => { last = bytes; } });
  const asked = s.server.requests.slice(before);
  t.same(asked.map((r) => r.range), [`bytes=${have}-`], 'the second download asked only for the rest');
  t.equal(last, b.bytes.length, 'progress counts the resumed bytes from where the .part ended');
  t.ok(fs.readFileSync(dest).equals(b.bytes), 'the result is byte-identical');
  t.notOk(exists(`${dest}.part`), 'no .part left');

  // A server that ignores Range (200 with the whole body): the .part is started over.
  const dest2 = path.join(box.downloads, 'again.tar.gz');
  fs.writeFileSync(`${dest2}.part`, randomBytes(1000));
  s.server.tamper((_req, res, f) => f.kind === 'targets' && !!f.body && !!res.writeHead(200, { 'content-length': f.body.length }).end(f.body));
  await box.fetcher.download(info, dest2);
  t.equal(s.server.requests.at(-1)?.range, 'bytes=1000-', 'it asked for a range');
  t.ok(fs.readFileSync(dest2).equals(b.bytes), 'and, answered 200, restarted from 0 (the stale bytes are gone)');
});
