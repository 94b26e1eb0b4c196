import { createHash, randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';

import t, { type Test } from 'tap';

import { HoldfastError } from '../appliance/errors/index.ts';
import { issueCertificate, revokeCertificate } from '../appliance/pki/index.ts';
import {
  ALPN, FLAG_END, type Frame, FrameDecoder, FrameType, MAX_PAYLOAD, PUT_WINDOW, encodeFrame, encodeJson, frameHeader, parseRequest, parseWireError,
} from '../appliance/protocol/index.ts';
import { type ClientTls, type Endpoint, StoreConnection } from '../appliance/replication/store-connection.ts';
import { cli } from './helpers/cli.ts';
import { type Pki, type StoreProcess, makePki, startStore } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';

const DAY = 86_400_000;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const read = (f: string) => fs.readFileSync(f);

function creds(pki: Pki, name: string, ca = pki.ca): ClientTls {
  const c = pki.cert(name);
  return { cert: read(c.cert), key: read(c.key), ca: read(ca) };
}

function endpoint(s: StoreProcess): Endpoint {
  return { host: '127.0.0.1', port: s.port };
}

async function connect(t: Test, s: StoreProcess, c: ClientTls): Promise<StoreConnection> {
  const conn = await StoreConnection.connect(endpoint(s), c);
  t.teardown(() => conn.close());
  return conn;
}

const reader = (data: Buffer) => async (pos: number, into: Buffer) => { data.copy(into, 0, pos, pos + into.length); };

async function putPack(conn: StoreConnection, data: Buffer): Promise<string> {
  const name = sha(data);
  await conn.put({ type: 'pack', name, size: data.length, digest: name }, 0, reader(data));
  return name;
}

/** Waits until the store's stderr has `n` JSON lines with this event. */
async function waitForEvent(s: StoreProcess, event: string, n: number, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (countEvents(s, event) < n) {
    if (Date.now() > until) throw new Error(`the store did not log ${n} ${event} events: ${s.stderr().slice(-2000)}`);
    await sleep(20);
  }
}

function countEvents(s: StoreProcess, event: string): number {
  return s.stderr().split('\n').filter((l) => l.includes(`"event":"${event}"`)).length;
}

const SUSPECT = /uncaught|unhandled|TypeError|RangeError|ReferenceError|SyntaxError|FATAL|^\s+at |Error: /i;

/**
 * Watches all of the store's stderr from now on (the helper keeps only its tail) for what looks like a crash,
 * an uncaught exception or a stack trace (not one of its JSON log lines), and for logged HF_IO errors; returns those lines.
 */
function watchStderr(s: StoreProcess): () => string[] {
  const bad: string[] = [];
  let partial = '';
  const suspicious = (l: string) => l.includes('"event":"error"') || (l !== '' && !l.startsWith('{"time"') && SUSPECT.test(l));
  const check = (l: string) => { if (suspicious(l) && bad.length < 20) bad.push(l); };
  s.child.stderr!.on('data', (d: Buffer) => {
    const lines = (partial + d.toString('utf8')).split('\n');
    partial = lines.pop()!;
    lines.forEach(check);
  });
  return () => { check(partial); return [...bad, ...s.stderr().split('\n').filter(suspicious)].slice(0, 20); };
}

function alive(s: StoreProcess): boolean {
  try {
    process.kill(s.pid, 0);
  } catch {
    return false;
  }
  return s.child.exitCode === null && s.child.signalCode === null;
}

t.test('refused: another CA, an expired or revoked certificate, a store certificate as client, a client that does not trust the store', async (t) => {
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme', 'revoked']);
  const foreign = await makePki(path.join(root, 'foreign'), ['acme'], ['store']);
  await issueCertificate(pki.dir, { name: 'expired', kind: 'appliance', notBefore: new Date(Date.now() - 30 * DAY), notAfter: new Date(Date.now() - DAY) });
  const store = await startStore(t, { dir: path.join(root, 'store'), pki });
  const suspect = watchStderr(store);
  const ep = endpoint(store);

  const stillServes = async (after: string) => {
    const c = await StoreConnection.connect(ep, creds(pki, 'acme'));
    try {
      t.equal(c.welcome.tenant, 'acme', `after ${after}: a valid appliance still connects`);
      t.ok((await c.ping()) >= 0, 'and is answered');
    } finally {
      c.close();
    }
  };
  await stillServes('start');
  const revokedBefore = await StoreConnection.connect(ep, creds(pki, 'revoked'));
  t.equal(revokedBefore.welcome.tenant, 'revoked', 'the soon-revoked certificate works before its revocation');
  revokedBefore.close();

  // A TLS session ticket of the soon-revoked certificate, to try resuming with after the revocation.
  const ticket = await helloWith(store.port, creds(pki, 'revoked'));
  t.ok(ticket.welcomed && ticket.session, 'a session ticket is issued before the revocation');
  const resumedBefore = await helloWith(store.port, creds(pki, 'revoked'), ticket.session);
  t.ok(resumedBefore.reused && resumedBefore.welcomed, 'and resumes (the store allows TLS resumption)');

  const refusedAtStore = () => countEvents(store, 'tls-refused') + countEvents(store, 'refused');
  const cases: [string, () => ClientTls | Promise<ClientTls>][] = [
    ['an appliance certificate from another CA', () => creds(foreign, 'acme', pki.ca)],
    ['an expired appliance certificate', () => creds(pki, 'expired')],
    ['a revoked appliance certificate (CRL reloaded on SIGHUP)', async () => {
      await revokeCertificate(pki.dir, 'revoked');
      const reloads = countEvents(store, 'reloaded');
      process.kill(store.pid, 'SIGHUP');
      await waitForEvent(store, 'reloaded', reloads + 1);
      return creds(pki, 'revoked');
    }],
    ['the store\'s own certificate presented as a client', () => creds(pki, 'store')],
    ['another store\'s certificate from another CA', () => creds(foreign, 'store', pki.ca)],
  ];
  for (const [what, make] of cases) {
    const c = await make();
    const before = refusedAtStore();
    await t.rejects(StoreConnection.connect(ep, c), { code: 'HF_TLS_REFUSED' }, `${what}: HF_TLS_REFUSED`);
    // The store's side of it: the handshake refused (OpenSSL) or the certificate's role refused (OU).
    const until = Date.now() + 5000;
    while (refusedAtStore() === before && Date.now() < until) await sleep(20);
    t.ok(refusedAtStore() > before, `${what}: the store logged the refusal`);
    await stillServes(what);
  }
  const resumedAfter = await helloWith(store.port, creds(pki, 'revoked'), ticket.session);
  t.notOk(resumedAfter.welcomed || resumedAfter.reused, 'a session ticket from before the revocation does not resume after the reload');

  // The other direction: a client that does not trust the store's CA refuses the store.
  await t.rejects(StoreConnection.connect(ep, creds(pki, 'acme', foreign.ca)), { code: 'HF_TLS_REFUSED' },
    'a client trusting another CA refuses the store: HF_TLS_REFUSED');
  await stillServes('a client that does not trust the store');
  t.ok(alive(store), 'the store is alive');
  t.same(suspect(), [], 'no exception in the store\'s stderr');
});

t.test('tenant isolation over the wire: another tenant cannot list, read, stat, see or delete a file', async (t) => {
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme', 'other']);
  const dir = path.join(root, 'store');
  const store = await startStore(t, { dir, pki });
  const acme = await connect(t, store, creds(pki, 'acme'));
  const other = await connect(t, store, creds(pki, 'other'));
  t.equal(other.welcome.tenant, 'other', 'the tenant is the certificate\'s CN');

  const data = randomBytes(50_000);
  const name = await putPack(acme, data);
  t.same(await acme.request({ op: 'LIST', type: 'pack' }), { files: [{ name, size: data.length }], more: false }, 'acme lists its pack');

  t.same(await other.request({ op: 'LIST', type: 'pack' }), { files: [], more: false }, 'other: LIST pack is empty');
  await t.rejects(other.getBuffer('pack', name), { code: 'HF_STORE_NOT_FOUND' }, 'other: GET is HF_STORE_NOT_FOUND');
  await t.rejects(other.request({ op: 'STAT', type: 'pack', name }), { code: 'HF_STORE_NOT_FOUND' }, 'other: STAT is not found');
  t.same(await other.request({ op: 'HAVE', files: [{ type: 'pack', name }] }), { files: [{ state: 'absent' }] }, 'other: HAVE says absent');
  t.same(await other.request({ op: 'DELETE', type: 'pack', name }), { purgeAfter: null }, 'other: DELETE finds nothing');
  const usage = await other.request({ op: 'STAT' });
  t.match(usage, { tenant: 'other', files: 0, bytes: 0 }, 'other: its usage is its own');
  // A request naming a tenant is just an unknown field.
  t.same(await other.request({ op: 'LIST', type: 'pack', tenant: 'acme' }), { files: [], more: false }, 'a tenant field in a request is ignored');

  t.same(await acme.getBuffer('pack', name), data, 'acme still reads its file, byte-identical');
  t.same(await acme.request({ op: 'HAVE', files: [{ type: 'pack', name }] }), { files: [{ state: 'complete', size: data.length }] }, 'acme HAVE: complete');
  t.same(await acme.request({ op: 'STAT', type: 'pack', name }), { size: data.length });
  t.notOk(fs.existsSync(path.join(dir, 'tenants', 'other', 'trash')) && fs.readdirSync(path.join(dir, 'tenants', 'other', 'trash')).length > 0,
    'nothing in other\'s trash');
  t.ok(fs.existsSync(path.join(dir, 'tenants', 'acme', 'data', name.slice(0, 2), name)), 'acme\'s file is where it was');
});

t.test('DELETE is reversible within the grace period; purged for good after it', async (t) => {
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme']);
  const dir = path.join(root, 'store');
  const store = await startStore(t, { dir, pki });
  const acme = await connect(t, store, creds(pki, 'acme'));
  t.equal(acme.welcome.graceSeconds, 30 * 86400, 'default grace: 30 days');
  const data = randomBytes(70_000);
  const name = await putPack(acme, data);

  const del = await acme.request({ op: 'DELETE', type: 'pack', name });
  t.ok(typeof del.purgeAfter === 'string' && Math.abs(Date.parse(del.purgeAfter) - (Date.now() + 30 * DAY)) < 60_000,
    `DELETE answers purgeAfter = now + grace (${String(del.purgeAfter)})`);
  t.same(await acme.request({ op: 'LIST', type: 'pack' }), { files: [], more: false }, 'gone from LIST');
  t.same(await acme.request({ op: 'HAVE', files: [{ type: 'pack', name }] }), { files: [{ state: 'absent' }] }, 'gone from HAVE');
  await t.rejects(acme.getBuffer('pack', name), { code: 'HF_STORE_NOT_FOUND' }, 'gone from GET');
  t.same(await acme.request({ op: 'DELETE', type: 'pack', name }), { purgeAfter: null }, 'a second DELETE finds nothing');

  const trash = await cli(['--json', 'store', 'trash', '--dir', dir, '--tenant', 'acme']);
  t.equal(trash.code, 0, 'store trash', { stderr: trash.stderr });
  t.match(trash.json, { tenant: 'acme', files: [{ type: 'pack', name, size: data.length }] }, 'the operator sees it in the trash');
  const early = await cli(['--json', 'store', 'purge', '--dir', dir, '--grace', '1h']);
  t.same(early.json, { purged: 0 }, 'purge with a grace of 1 h leaves it');
  const back = await cli(['--json', 'store', 'undelete', '--dir', dir, '--tenant', 'acme']);
  t.same(back.json, { tenant: 'acme', restored: 1 }, 'store undelete restores it');
  t.same(await acme.getBuffer('pack', name), data, 'back, byte-identical');
  t.same(await acme.request({ op: 'LIST', type: 'pack' }), { files: [{ name, size: data.length }], more: false }, 'and listed');

  // A second front-end of the same directory with a grace of 2 s.
  const short = await startStore(t, { dir, pki, grace: '2s' });
  const acme2 = await connect(t, short, creds(pki, 'acme'));
  t.equal(acme2.welcome.graceSeconds, 2, 'WELCOME tells the grace');
  const del2 = await acme2.request({ op: 'DELETE', type: 'pack', name });
  t.ok(typeof del2.purgeAfter === 'string' && Date.parse(del2.purgeAfter) - Date.now() < 3000, 'purgeAfter = now + 2 s');
  const deletedAt = Date.now();
  t.match((await cli(['--json', 'store', 'trash', '--dir', dir, '--tenant', 'acme'])).json, { files: [{ name }] }, 'in the trash again');
  await sleep(Math.max(0, deletedAt + 2500 - Date.now()));
  const purge = await cli(['--json', 'store', 'purge', '--dir', dir, '--grace', '2s']);
  t.equal(purge.code, 0, 'store purge --grace 2s');
  const byTimer = countEvents(short, 'purged');
  t.ok(purge.json?.purged === 1 || byTimer > 0, `purged for good (${purge.json?.purged} by the command, ${byTimer} event(s) by the store's timer)`);
  t.same((await cli(['--json', 'store', 'trash', '--dir', dir, '--tenant', 'acme'])).json, { tenant: 'acme', files: [] }, 'the trash is empty');
  t.same((await cli(['--json', 'store', 'undelete', '--dir', dir, '--tenant', 'acme'])).json, { tenant: 'acme', restored: 0 }, 'nothing to undelete');
  await t.rejects(acme.getBuffer('pack', name), { code: 'HF_STORE_NOT_FOUND' }, 'GET: not found');
  const trashDir = path.join(dir, 'tenants', 'acme', 'trash');
  t.same(fs.existsSync(trashDir) ? fs.readdirSync(trashDir) : [], [], 'no byte of it left on disk');
});

/** A raw TLS connection that sends HELLO: was it welcomed, was the session resumed, and its ticket. */
function helloWith(port: number, c: ClientTls, session?: Buffer): Promise<{ welcomed: boolean; reused: boolean; session?: Buffer }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, cert: c.cert, key: c.key, ca: c.ca, minVersion: 'TLSv1.3', ALPNProtocols: [ALPN], ...(session ? { session } : {}) });
    const out: { welcomed: boolean; reused: boolean; session?: Buffer } = { welcomed: false, reused: false };
    const decoder = new FrameDecoder();
    const timer = setTimeout(() => s.destroy(), 5000);
    s.on('session', (ticket: Buffer) => { out.session ??= ticket; });
    s.on('secureConnect', () => {
      out.reused = s.isSessionReused();
      s.write(Buffer.concat(encodeJson(FrameType.HELLO, 0, 0, { versions: [1], client: 'resume' })));
    });
    s.on('data', (chunk: Buffer) => {
      try {
        if (decoder.push(chunk).some((f) => f.type === FrameType.WELCOME)) out.welcomed = true;
      } catch {
        s.destroy();
      }
      // wait a little for the session ticket, which TLS 1.3 sends after the handshake
      if (out.welcomed) setTimeout(() => s.end(), out.session || session ? 0 : 200);
    });
    s.on('error', () => undefined);
    s.on('close', () => { clearTimeout(timer); resolve(out); });
  });
}

// ------------------------------------------------------------------------------------------------ fuzz

t.test('many GETs and PUTs at once on one connection complete byte-exact (the store\'s output backpressure does not stall them)', async (t) => {
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme']);
  const store = await startStore(t, { dir: path.join(root, 'store'), pki });
  const conn = await connect(t, store, creds(pki, 'acme'));
  const files = Array.from({ length: 12 }, () => randomBytes((3 << 20) + randomInt(1 << 20)));
  const names = await Promise.all(files.map((f) => putPack(conn, f)));
  const started = performance.now();
  // 24 GETs of 3-4 MiB (more answer bytes in flight than the store buffers before it stops reading) and 6 PUTs at once
  const more = Array.from({ length: 6 }, () => randomBytes(2 << 20));
  const [gets, puts] = await Promise.all([
    Promise.all([...names, ...names].map((n) => conn.getBuffer('pack', n))),
    Promise.all(more.map((f) => putPack(conn, f))),
  ]);
  t.ok(gets.every((g, i) => g.equals(files[i % files.length]!)), `${gets.length} GETs byte-exact`);
  t.same(await Promise.all(puts.map((n) => conn.getBuffer('pack', n))), more, `${puts.length} PUTs stored byte-exact`);
  t.comment(`${((gets.reduce((s, g) => s + g.length, 0) + (12 << 20)) / 1e6).toFixed(0)} MB in ${((performance.now() - started) / 1000).toFixed(1)} s`);
});


/** The resident memory of a process, in MiB. */
function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
}

t.test('a client that sends requests and never reads the answers does not grow the store\'s memory without bound', async (t) => {
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme', 'flooder']);
  const store = await startStore(t, { dir: path.join(root, 'store'), pki });
  const good = await connect(t, store, creds(pki, 'acme'));
  const raw = new Raw(store.port, creds(pki, 'flooder'));
  t.teardown(() => raw.socket.destroy());
  await raw.ready();
  raw.socket.pause(); // never read
  await raw.write(HELLO);
  await good.ping();
  const before = rssMiB(store.pid);
  // 400,000 small malformed REQUESTs and PINGs (~30 MB): each answered by an ERROR or PONG the client never reads
  const bad = Buffer.from('{"op":"NOPE"}');
  const ping = Buffer.concat(encodeFrame(FrameType.PING, 0, 0, randomBytes(8)));
  let sent = 0;
  let stalled = false;
  for (let id = 1; sent < 400_000 && !stalled; ) {
    const parts: Buffer[] = [];
    for (let k = 0; k < 10_000; k++, sent++, id += 2) parts.push(...encodeFrame(FrameType.REQUEST, 0, id, bad), ping);
    if (!raw.socket.write(Buffer.concat(parts))) {
      // the store stopped reading when the kernel's buffers are full: no drain
      stalled = !(await Promise.race([new Promise<boolean>((resolve) => raw.socket.once('drain', () => resolve(true))), sleep(3000).then(() => false)]));
    }
  }
  await sleep(500);
  const grown = rssMiB(store.pid) - before;
  t.ok(stalled, `the store stopped reading the connection (after ${sent} of 400,000 requests were handed to the socket; ${(raw.socket.writableLength / 1e6).toFixed(1)} MB wait in the client)`);
  t.ok(grown < 64, `the store's memory grew by ${grown.toFixed(0)} MiB, not by the hundreds of MiB of unread answers`);
  t.ok((await good.ping()) >= 0, 'meanwhile another client is served');
  raw.socket.destroy();
  await raw.closed;
  t.ok(alive(store), 'the store is alive');
});


const HELLO = Buffer.concat(encodeJson(FrameType.HELLO, 0, 0, { versions: [1], client: 'fuzz', capabilities: [], maxFrame: MAX_PAYLOAD }));

/** A raw TLS connection speaking frames: what a buggy or hostile appliance can send. */
class Raw {
  readonly socket: tls.TLSSocket;
  readonly #decoder = new FrameDecoder(MAX_PAYLOAD);
  readonly frames: Frame[] = [];
  onFrame: ((f: Frame) => void) | null = null;
  readonly closed: Promise<void>;
  decodeError: unknown = null;

  constructor(port: number, c: ClientTls, session?: Buffer) {
    this.socket = tls.connect({
      host: '127.0.0.1', port, cert: c.cert, key: c.key, ca: c.ca, minVersion: 'TLSv1.3', ALPNProtocols: [ALPN], ...(session ? { session } : {}),
    });
    this.socket.on('data', (chunk: Buffer) => {
      let fs: Frame[];
      try {
        fs = this.#decoder.push(chunk);
      } catch (err) {
        this.decodeError = err;
        this.socket.destroy();
        return;
      }
      for (const f of fs) {
        if (this.onFrame) this.onFrame(f);
        else this.frames.push(f);
      }
    });
    this.socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => this.socket.on('close', () => resolve()));
  }

  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.socket.alpnProtocol) { resolve(); return; }
      this.socket.once('secureConnect', () => resolve());
      this.socket.once('close', () => reject(new Error('closed before the handshake')));
    });
  }

  write(b: Buffer): Promise<void> {
    if (this.socket.write(b)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { this.socket.off('drain', done); this.socket.off('close', done); resolve(); };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }
}

const hex = (n: number) => randomBytes(n).toString('hex');

/** A REQUEST payload the protocol refuses (checked with parseRequest), and the code the store must answer. */
function malformedRequest(): { payload: Buffer; code: string } {
  for (;;) {
    const payload = candidate();
    try {
      parseRequest(payload);
    } catch (err) {
      if (err instanceof HoldfastError) return { payload, code: err.code };
      throw err;
    }
  }
}

const WEIRD: readonly unknown[] = [-1, 0.5, 2 ** 53, 1e300, '1', '', null, true, [], {}, { toString: 1 }, 'x'.repeat(300), '..', 'a/b', '../../etc',
  'A'.repeat(64), '0'.repeat(63), 'lock', 'PUT', 'put'];

function validRequest(): Record<string, unknown> {
  const h = hex(32);
  switch (randomInt(6)) {
    case 0: return { op: 'HAVE', files: [{ type: 'pack', name: h }] };
    case 1: return { op: 'PUT', type: 'pack', name: h, digest: h, size: 100, offset: 0 };
    case 2: return { op: 'GET', type: 'index', name: h, offset: 0, length: 1 };
    case 3: return { op: 'LIST', type: 'snapshot', limit: 10 };
    case 4: return { op: 'DELETE', type: 'key', name: 'passphrase-1' };
    default: return { op: 'STAT', type: 'pack', name: h };
  }
}

function candidate(): Buffer {
  if (randomInt(2000) === 0) { // big: padded up to the maximum payload
    const size = randomInt(2) ? MAX_PAYLOAD : 10_000 + randomInt(200_000);
    const pad = Buffer.from(JSON.stringify({ op: 'PUT', pad: '' }));
    return Buffer.concat([pad.subarray(0, pad.length - 2), Buffer.alloc(size - pad.length, 0x61), pad.subarray(pad.length - 2)]);
  }
  if (randomInt(500) === 0) { // HAVE with one entry too many, whole or cut
    return Buffer.from(JSON.stringify({ op: 'HAVE', files: Array.from({ length: 1001 }, () => ({ type: 'pack', name: hex(32) })) }).slice(0, randomInt(2) ? undefined : 50_000));
  }
  const r = randomInt(100);
  if (r < 10) return randomBytes(randomInt(100));
  const o = validRequest();
  if (r < 35) { // byte damage
    const b = Buffer.from(JSON.stringify(o));
    for (let n = 1 + randomInt(3); n > 0; n--) {
      const at = randomInt(b.length);
      if (randomInt(2)) b[at] = randomInt(256);
      else return Buffer.concat([b.subarray(0, at), Buffer.from(JSON.stringify(WEIRD[randomInt(WEIRD.length)])), b.subarray(at + 1)]);
    }
    return b;
  }
  const keys = Object.keys(o);
  if (r < 60) o[keys[randomInt(keys.length)]!] = WEIRD[randomInt(WEIRD.length)];
  else if (r < 70) delete o[keys[1 + randomInt(keys.length - 1)] ?? 'x'];
  else if (r < 80) o.op = WEIRD[randomInt(WEIRD.length)];
  else if (r < 90) { o.name = [`${hex(15)}/${hex(16)}`, '..', hex(32).toUpperCase(), hex(31), `../${hex(30)}`][randomInt(5)]; if (o.digest) o.digest = o.name; }
  else return Buffer.from(JSON.stringify(randomInt(2) ? [o] : randomInt(1000)));
  return Buffer.from(JSON.stringify(o));
}

interface ConnOutcome {
  kind: string;
  welcomed: boolean;
  goaway: string | null;
  closed: boolean;
  resumed: boolean;
}

/** One connection-level malformation on its own connection: what the store answered, and that it closed. */
async function connectionCase(port: number, c: ClientTls, kind: string, session?: Buffer): Promise<ConnOutcome> {
  const raw = new Raw(port, c, session);
  const out: ConnOutcome = { kind, welcomed: false, goaway: null, closed: false, resumed: false };
  raw.onFrame = (f) => {
    if (f.type === FrameType.WELCOME) out.welcomed = true;
    else if (f.type === FrameType.GOAWAY) out.goaway = parseWireError(f.payload).code;
  };
  try {
    await raw.ready();
    out.resumed = raw.socket.isSessionReused();
    const frame = (type: number, stream: number, payload: Buffer, flags = 0) => Buffer.concat(encodeFrame(type as FrameType, flags, stream, payload));
    let bytes: Buffer;
    let end = false;
    switch (kind) {
      case 'truncated': { // a frame cut short, then the client goes away
        const whole = Buffer.concat(encodeJson(FrameType.REQUEST, 0, 1, { op: 'LIST', type: 'pack' }));
        bytes = Buffer.concat([HELLO, whole.subarray(0, 1 + randomInt(whole.length - 1))]);
        end = true;
        break;
      }
      case 'truncated-hello':
        bytes = HELLO.subarray(0, 1 + randomInt(HELLO.length - 1));
        end = true;
        break;
      case 'oversized':
        bytes = Buffer.concat([HELLO, frameHeader(randomInt(2) ? FrameType.DATA : FrameType.REQUEST, 0, 1, MAX_PAYLOAD + 1 + randomInt(2 ** 32 - MAX_PAYLOAD - 1)), randomBytes(randomInt(64))]);
        break;
      case 'oversized-first':
        bytes = Buffer.concat([frameHeader(FrameType.HELLO, 0, 0, MAX_PAYLOAD + 1 + randomInt(1000)), randomBytes(randomInt(64))]);
        break;
      case 'unknown-type': {
        const type = [0x00, 0x02, 0x04, 0x07, 0x0a, 0x0b, 0x0c + randomInt(0xf4)][randomInt(7)]!;
        bytes = Buffer.concat([HELLO, frame(type, randomInt(4), randomBytes(randomInt(40)))]);
        break;
      }
      case 'data-unopened':
        bytes = Buffer.concat([HELLO, frame(FrameType.DATA, 1 + 2 * randomInt(1000), randomBytes(randomInt(100)), randomInt(2))]);
        break;
      case 'window-length': {
        const len = [0, 1, 2, 3, 5, 8, 100][randomInt(7)]!;
        bytes = Buffer.concat([HELLO, frame(FrameType.WINDOW, randomInt(4), randomBytes(len))]);
        break;
      }
      case 'garbage-before-hello': { // pure noise (mostly a huge length), or a plausible header with noise after it
        const noise = randomBytes(1 + randomInt(200));
        bytes = randomInt(2) ? Buffer.concat([noise, HELLO])
          : Buffer.concat([frameHeader(randomInt(256) as FrameType, randomInt(256), randomInt(2 ** 32), randomInt(300)), noise, HELLO]);
        end = true;
        break;
      }
      case 'hello-twice':
        bytes = Buffer.concat([HELLO, HELLO]);
        break;
      case 'request-before-hello':
        bytes = Buffer.concat(encodeJson(FrameType.REQUEST, 0, 1, { op: 'STAT' }));
        break;
      case 'bad-hello':
        bytes = frame(FrameType.HELLO, 0, [Buffer.from('{"versions":"1"}'), Buffer.from('[1]'), randomBytes(20), Buffer.from('{"versions":[1],"maxFrame":-4}')][randomInt(4)]!);
        break;
      case 'hello-version':
        bytes = Buffer.concat(encodeJson(FrameType.HELLO, 0, 0, { versions: [2, 3], client: 'future' }));
        break;
      case 'ping-bad':
        bytes = Buffer.concat([HELLO, frame(FrameType.PING, randomInt(2) ? 0 : 1 + randomInt(9), randomBytes(randomInt(2) ? 7 : 9))]);
        break;
      default:
        throw new Error(kind);
    }
    await raw.write(bytes);
    if (end) raw.socket.end();
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; raw.socket.destroy(); }, 8000);
    await raw.closed;
    clearTimeout(timer);
    out.closed = !timedOut;
  } catch {
    raw.socket.destroy();
    await raw.closed;
  }
  return out;
}

const EXPECTED: Record<string, string | null | undefined> = {
  'truncated': null, // closed by the client: no GOAWAY needed
  'truncated-hello': null,
  'oversized': 'HF_PROTO_FRAME_TOO_LARGE',
  'oversized-first': 'HF_PROTO_FRAME_TOO_LARGE',
  'unknown-type': 'HF_PROTO_MALFORMED',
  'data-unopened': 'HF_PROTO_STREAM',
  'window-length': 'HF_PROTO_MALFORMED',
  'garbage-before-hello': undefined, // GOAWAY with a code, or a close: depends on the bytes
  'hello-twice': 'HF_PROTO_MALFORMED',
  'request-before-hello': 'HF_PROTO_MALFORMED',
  'bad-hello': 'HF_PROTO_MALFORMED',
  'hello-version': 'HF_PROTO_VERSION',
  'ping-bad': 'HF_PROTO_MALFORMED',
};

t.test('fuzz: 100,000+ malformed frames against a real store, which keeps serving a well-behaved client', async (t) => {
  const STREAM_FRAMES = Number(process.env.HOLDFAST_FUZZ_STREAM ?? 100_000);
  const CONN_CASES = Number(process.env.HOLDFAST_FUZZ_CONN ?? 2_600);
  const started = performance.now();
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme', 'fuzzer']);
  const store = await startStore(t, { dir: path.join(root, 'store'), pki });
  const pid = store.pid;
  const suspect = watchStderr(store);
  const fuzzCreds = creds(pki, 'fuzzer');

  // ---- the well-behaved client, busy all along
  const good = await connect(t, store, creds(pki, 'acme'));
  const goodStats = { pings: 0, roundTrips: 0, bytes: 0, maxPingMs: 0 };
  const goodErrors: string[] = [];
  let fuzzing = true;
  const roundTrip = async () => {
    const data = randomBytes(1 + randomInt(300_000));
    const name = await putPack(good, data);
    const back = await good.getBuffer('pack', name);
    if (!back.equals(data)) goodErrors.push(`GET ${name} returned other bytes`);
    goodStats.roundTrips++;
    goodStats.bytes += data.length;
  };
  const goodLoop = (async () => {
    for (let i = 0; fuzzing; i++) {
      try {
        const ms = await good.ping();
        goodStats.pings++;
        goodStats.maxPingMs = Math.max(goodStats.maxPingMs, ms);
        if (i % 10 === 0) await roundTrip();
      } catch (err) {
        goodErrors.push(String(err));
        return;
      }
      await sleep(10);
    }
  })();

  // ---- stream-level: one connection, malformed REQUESTs, each answered by an ERROR on its stream, in order
  const raw = new Raw(store.port, fuzzCreds);
  t.teardown(() => raw.socket.destroy());
  await raw.ready();
  await raw.write(HELLO);
  const expected: { stream: number; code: string }[] = [];
  let answered = 0;
  let pongs = 0;
  const mismatches: string[] = [];
  const otherFrames: number[] = [];
  const codes = new Map<string, number>();
  let wake: (() => void) | null = null;
  let welcomed = false;
  raw.onFrame = (f) => {
    if (f.type === FrameType.WELCOME) {
      welcomed = true;
    } else if (f.type === FrameType.ERROR) {
      const want = expected[answered++];
      const w = parseWireError(f.payload);
      codes.set(w.code, (codes.get(w.code) ?? 0) + 1);
      if (!want || want.stream !== f.stream || want.code !== w.code || !(f.flags & FLAG_END)) {
        if (mismatches.length < 10) mismatches.push(`ERROR #${answered}: stream ${f.stream} ${w.code} (${w.message.slice(0, 100)}), expected ${JSON.stringify(want)}`);
      }
    } else if (f.type === FrameType.PONG) {
      pongs++;
    } else {
      otherFrames.push(f.type);
    }
    wake?.();
  };
  const waitAnswered = async (n: number, ms: number) => {
    const until = Date.now() + ms;
    while (answered < n && !raw.socket.destroyed && Date.now() < until) {
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 200).unref();
      });
      wake = null;
    }
  };
  let next = 1;
  let lastOdd = 0;
  let pingsSent = 0;
  let ignoredSent = 0;
  while (expected.length < STREAM_FRAMES && !raw.socket.destroyed) {
    const parts: Buffer[] = [];
    for (let k = 0; k < 400 && expected.length < STREAM_FRAMES; k++) {
      const r = randomInt(1000);
      if (r < 5 && lastOdd > 0) { // a stream id used before
        const id = 1 + 2 * randomInt((lastOdd + 1) / 2);
        parts.push(...encodeFrame(FrameType.REQUEST, 0, id, malformedRequest().payload));
        expected.push({ stream: id, code: 'HF_PROTO_STREAM' });
      } else if (r < 10) { // an even id, or 0
        const id = r < 8 ? next + 1 : 0;
        parts.push(...encodeFrame(FrameType.REQUEST, randomInt(2), id, Buffer.from(JSON.stringify(validRequest()))));
        expected.push({ stream: id, code: 'HF_PROTO_STREAM' });
      } else if (r < 15) { // frames on streams already closed: ignored, never answered
        const id = lastOdd > 0 ? 1 + 2 * randomInt((lastOdd + 1) / 2) : 1;
        parts.push(...(r < 12 ? encodeFrame(FrameType.CANCEL, 0, id) : encodeFrame(FrameType.WINDOW, 0, id, randomBytes(4))));
        ignoredSent++;
      } else {
        const m = malformedRequest();
        parts.push(...encodeFrame(FrameType.REQUEST, randomInt(4) === 0 ? FLAG_END : 0, next, m.payload));
        expected.push({ stream: next, code: m.code });
        lastOdd = next;
        next += 2;
      }
    }
    if (expected.length % 10_000 < 400) {
      parts.push(...encodeFrame(FrameType.PING, 0, 0, randomBytes(8)));
      pingsSent++;
    }
    await raw.write(Buffer.concat(parts));
    await waitAnswered(expected.length - 4000, 30_000); // at most ~4,000 unanswered in flight
  }
  await waitAnswered(expected.length, 30_000);
  const streamMs = performance.now() - started;
  t.ok(welcomed, 'the fuzzing connection was welcomed');
  t.notOk(raw.socket.destroyed, 'the fuzzing connection is still open: every malformation was a stream error');
  t.equal(answered, expected.length, `${answered} ERROR frames for ${expected.length} malformed REQUESTs: each was processed`);
  t.same(mismatches, [], 'each ERROR on its stream, in order, with the code the protocol gives');
  t.equal(pongs, pingsSent, `${pongs} PINGs answered on the fuzzing connection`);
  t.same(otherFrames, [], 'and nothing else: frames on closed streams are ignored');
  t.comment(`stream level: ${expected.length} malformed REQUESTs (+ ${ignoredSent} ignored CANCEL/WINDOW on closed streams) in ${(streamMs / 1000).toFixed(1)} s; `
    + `ERROR codes ${JSON.stringify(Object.fromEntries(codes))}`);
  // still a working connection after all that
  const statId = next;
  const stat = new Promise<Frame>((resolve) => { raw.onFrame = (f) => { if (f.stream === statId) resolve(f); }; });
  await raw.write(Buffer.concat(encodeJson(FrameType.REQUEST, 0, statId, { op: 'STAT' })));
  const statFrame = await stat;
  t.equal(statFrame.type, FrameType.RESPONSE, 'then a valid STAT on the same connection is answered');
  raw.socket.end();

  // ---- connection-level: each on its own connection
  const kinds = Object.keys(EXPECTED);
  const outcomes: ConnOutcome[] = [];
  const connStarted = performance.now();
  // Resuming one TLS session (a ticket from a well-behaved connection) spares most of the handshakes' crypto;
  // every fourth connection makes a full handshake.
  const { session } = await helloWith(store.port, fuzzCreds);
  let i = 0;
  const worker = async () => {
    while (i < CONN_CASES) {
      const n = i++;
      outcomes.push(await connectionCase(store.port, fuzzCreds, kinds[n % kinds.length]!, n % 4 === 3 ? undefined : session));
    }
  };
  await Promise.all(Array.from({ length: 12 }, worker));
  const connMs = performance.now() - connStarted;
  const wrong: string[] = [];
  const byKind = new Map<string, Map<string, number>>();
  for (const o of outcomes) {
    const want = EXPECTED[o.kind];
    const got = o.goaway ?? (o.closed ? 'close' : 'open');
    const m = byKind.get(o.kind) ?? new Map<string, number>();
    m.set(got, (m.get(got) ?? 0) + 1);
    byKind.set(o.kind, m);
    const ok = o.closed && (want === undefined ? true : want === null ? o.goaway === null : o.goaway === want);
    if (!ok && wrong.length < 10) wrong.push(`${o.kind}: ${JSON.stringify(o)}`);
  }
  t.equal(outcomes.length, CONN_CASES, `${CONN_CASES} connection-level malformations, each on its own connection`);
  t.same(wrong, [], 'each was answered with the right GOAWAY (or closed, for truncation and garbage) and the connection closed');
  t.comment(`connection level: ${outcomes.length} connections (${outcomes.filter((o) => o.resumed).length} resumed a TLS session) in ${(connMs / 1000).toFixed(1)} s (${Math.round(outcomes.length / (connMs / 1000))}/s): `
    + JSON.stringify(Object.fromEntries([...byKind].map(([k, m]) => [k, Object.fromEntries(m)]))));

  // ---- the well-behaved client kept working, and still does
  fuzzing = false;
  await goodLoop;
  t.same(goodErrors, [], 'the well-behaved client saw no error during the fuzz');
  t.ok(goodStats.pings > 10 && goodStats.roundTrips > 2, `during the fuzz: ${goodStats.pings} PINGs answered (slowest ${goodStats.maxPingMs.toFixed(0)} ms), `
    + `${goodStats.roundTrips} PUT+GET round trips byte-exact (${goodStats.bytes} bytes)`);
  await roundTrip();
  t.ok((await good.ping()) >= 0, 'after the fuzz: PING answered');
  t.same(goodErrors, [], 'after the fuzz: a PUT and a GET round-trip byte-exact');
  const fresh = await connect(t, store, creds(pki, 'acme'));
  t.ok(Array.isArray((await fresh.request({ op: 'LIST', type: 'pack' })).files), 'and a new connection is served');

  const total = expected.length + outcomes.length;
  t.ok(total >= 100_000, `${total} malformed frames in all (${expected.length} stream-level + ${outcomes.length} connection-level)`);
  t.ok(alive(store) && store.pid === pid, `the store process ${pid} is alive, never restarted`);
  t.same(suspect(), [], 'no uncaught exception, stack trace or HF_IO error in its stderr');
  t.comment(`fuzz test total ${((performance.now() - started) / 1000).toFixed(1)} s`);
});

/** Waits for the next frame on a Raw connection matching the predicate. */
function nextFrame(raw: Raw, match: (f: Frame) => boolean, ms = 10_000): Promise<Frame> {
  const found = raw.frames.findIndex(match);
  if (found >= 0) return Promise.resolve(raw.frames.splice(found, 1)[0]!);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { raw.onFrame = null; reject(new Error('no such frame in time')); }, ms);
    raw.onFrame = (f) => {
      if (match(f)) { clearTimeout(timer); raw.onFrame = null; resolve(f); } else raw.frames.push(f);
    };
  });
}

const request = (id: number, body: Record<string, unknown>) => Buffer.concat(encodeJson(FrameType.REQUEST, 0, id, body));
const data = (id: number, bytes: Buffer, end: boolean) => Buffer.concat(encodeFrame(FrameType.DATA, end ? FLAG_END : 0, id, bytes));

t.test('an appliance cannot write into a file another stream is uploading or has stored; a lying offset does not dodge the quota; DATA without window ends the connection', async (t) => {
  const root = tmpDir(t);
  const pki = await makePki(path.join(root, 'pki'), ['acme']);
  const store = await startStore(t, { dir: path.join(root, 'store'), pki, quota: '300KiB' });
  const raw = new Raw(store.port, creds(pki, 'acme'));
  t.teardown(() => raw.socket.destroy());
  await raw.ready();
  await raw.write(HELLO);
  await nextFrame(raw, (f) => f.type === FrameType.WELCOME);

  const good = randomBytes(100_000);
  const name = sha(good);
  const put = { op: 'PUT', type: 'pack', name, size: good.length, digest: name, offset: 0 };
  await raw.write(request(1, put));
  const ready = await nextFrame(raw, (f) => f.stream === 1);
  t.equal(ready.type, FrameType.RESPONSE, 'stream 1 may upload');
  await raw.write(request(3, put));
  const busy = await nextFrame(raw, (f) => f.stream === 3);
  t.equal(busy.type, FrameType.ERROR, 'a second stream uploading the same file is refused');
  t.equal(JSON.parse(busy.payload.toString()).code, 'HF_STORE_BUSY', 'with HF_STORE_BUSY');
  await raw.write(data(1, good, true));
  const done = await nextFrame(raw, (f) => f.stream === 1);
  t.ok(done.type === FrameType.RESPONSE && (done.flags & FLAG_END) !== 0, 'stream 1 stores the file');
  // Now try to overwrite it: a new PUT of the stored file is answered at once, and DATA for it goes nowhere.
  await raw.write(request(5, put));
  const again = await nextFrame(raw, (f) => f.stream === 5);
  t.ok(again.type === FrameType.RESPONSE && (again.flags & FLAG_END) !== 0, 'a PUT of a stored file ends at once');
  await raw.write(data(5, Buffer.alloc(good.length), true));
  await raw.write(Buffer.concat(encodeFrame(FrameType.PING, 0, 0, Buffer.alloc(8))));
  await nextFrame(raw, (f) => f.type === FrameType.PONG);
  t.same(fs.readFileSync(path.join(root, 'store', 'tenants', 'acme', 'data', name.slice(0, 2), name)), good, 'the stored file is unchanged (the zeros went nowhere)');

  // Quota: 300 KiB, 100 KB used. A 400 KB file claimed to start at its end is still charged in full.
  const big = randomBytes(400_000);
  const bn = sha(big);
  await raw.write(request(7, { op: 'PUT', type: 'pack', name: bn, size: big.length, digest: bn, offset: big.length }));
  const q = await nextFrame(raw, (f) => f.stream === 7);
  t.equal(q.type, FrameType.ERROR, 'the lying offset is refused');
  t.equal(JSON.parse(q.payload.toString()).code, 'HF_STORE_QUOTA_EXCEEDED', 'with HF_STORE_QUOTA_EXCEEDED');

  // Flow control: DATA the store has granted no window for (before it accepted the PUT) ends this connection only.
  const open = await startStore(t, { dir: path.join(root, 'store2'), pki });
  raw.socket.destroy();
  const flowRaw = new Raw(open.port, creds(pki, 'acme'));
  t.teardown(() => flowRaw.socket.destroy());
  await flowRaw.ready();
  await flowRaw.write(HELLO);
  await nextFrame(flowRaw, (f) => f.type === FrameType.WELCOME);
  const sn = sha(randomBytes(32));
  flowRaw.socket.write(Buffer.concat([request(9, { op: 'PUT', type: 'pack', name: sn, size: 8 << 20, digest: sn, offset: 0 }), data(9, Buffer.alloc(1 << 20), false)]));
  const bye = await nextFrame(flowRaw, (f) => f.type === FrameType.GOAWAY).catch(() => null);
  t.ok(bye, 'GOAWAY');
  t.equal(bye && JSON.parse(bye.payload.toString()).code, 'HF_PROTO_FLOW', 'with HF_PROTO_FLOW');
  await flowRaw.closed;
  const other = await connect(t, open, creds(pki, 'acme'));
  t.ok((await other.ping()) >= 0, 'the store goes on serving');
  t.ok(alive(open) && alive(store), 'and is alive');
});
