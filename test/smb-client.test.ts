// The SMB client against a scripted server on loopback, for what a real
// Samba will not do: grant only a few credits, answer an empty directory with
// NO_SUCH_FILE (as Windows does), refuse or drop every SMB 2/3 dialect (an
// SMB 1-only server), leave out LARGE_MTU, or answer STATUS_PENDING first.
// Past logon, the client is built around the connection without signing
// (the scripted server cannot sign); everything else is the real code.
import net from 'node:net';

import t, { type Test } from 'tap';

import { SmbClient } from '../appliance/sources/smb/index.ts';
import { parseNegotiate } from '../appliance/sources/smb/smb-client.ts';
import { SmbConnection, type Smb2Response } from '../appliance/sources/smb/smb-connection.ts';
import { Capability, Command, HEADER_SIZE, HeaderFlag, SMB2_MAGIC, Status, readHeader } from '../appliance/sources/smb/smb2-wire.ts';

interface Request {
  command: number;
  creditCharge: number;
  messageId: bigint;
  body: Buffer;
}

/** What the script answers: a status, a body, the credits granted; or 'drop' to close the connection. */
type Answer = { status?: number; body?: Buffer; credits?: number; interim?: { afterMs: number; finalAfterMs: number } } | 'drop';

/** A TCP server that answers each SMB2 request as `script` says (undefined: an ECHO reply granting 64 credits). */
async function scriptedServer(t: Test, script: (r: Request) => Answer | undefined): Promise<{ port: number; requests: Request[] }> {
  const requests: Request[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    let buf = Buffer.alloc(0);
    sock.on('error', () => undefined);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const msg = buf.subarray(4, 4 + buf.readUInt32BE(0));
        buf = buf.subarray(4 + msg.length);
        const h = readHeader(msg);
        const req = { command: h.command, creditCharge: h.creditCharge, messageId: h.messageId, body: Buffer.from(msg.subarray(HEADER_SIZE)) };
        requests.push(req);
        const a = script(req) ?? { body: Buffer.from([4, 0, 0, 0]), credits: 64 };
        if (a === 'drop') {
          sock.destroy();
          return;
        }
        const send = (status: number, body: Buffer, credits: number, async: boolean) => {
          const m = Buffer.alloc(HEADER_SIZE + body.length);
          m.writeUInt32LE(SMB2_MAGIC, 0);
          m.writeUInt16LE(HEADER_SIZE, 4);
          m.writeUInt16LE(req.creditCharge, 6);
          m.writeUInt32LE(status, 8);
          m.writeUInt16LE(req.command, 12);
          m.writeUInt16LE(credits, 14);
          m.writeUInt32LE(HeaderFlag.SERVER_TO_REDIR | (async ? HeaderFlag.ASYNC_COMMAND : 0), 16);
          m.writeBigUInt64LE(req.messageId, 24);
          if (async) m.writeBigUInt64LE(7n, 32);
          m.writeBigUInt64LE(1n, 40);
          body.copy(m, HEADER_SIZE);
          const len = Buffer.alloc(4);
          len.writeUInt32BE(m.length);
          if (!sock.destroyed) sock.write(Buffer.concat([len, m]));
        };
        const status = a.status ?? Status.SUCCESS;
        const body = a.body ?? errorBody();
        if (a.interim) {
          setTimeout(() => send(Status.PENDING, errorBody(), 0, true), a.interim.afterMs);
          setTimeout(() => send(status, body, a.credits ?? req.creditCharge, true), a.interim.finalAfterMs);
        } else {
          send(status, body, a.credits ?? req.creditCharge, false);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.close(() => resolve());
    for (const s of sockets) s.destroy();
  }));
  return { port: (server.address() as net.AddressInfo).port, requests };
}

/** An ERROR response body (§2.2.2). */
function errorBody(): Buffer {
  const b = Buffer.alloc(9);
  b.writeUInt16LE(9, 0);
  return b;
}

/** A READ response body (§2.2.20) carrying n bytes of `fill`. */
function readBody(n: number, fill = 0x61): Buffer {
  const b = Buffer.alloc(16 + n, fill);
  b.writeUInt16LE(17, 0);
  b.writeUInt8(HEADER_SIZE + 16, 2);
  b.writeUInt32LE(n, 4);
  b.fill(0, 8, 16);
  return b;
}

/**
 * An SmbClient past logon on a connection to the scripted server (its
 * constructor is private to the module: this is a test). The connection
 * starts with 1 credit; an ECHO first gets it what the server grants.
 */
async function clientOn(t: Test, port: number, timeoutMs = 5000): Promise<{ client: SmbClient; conn: SmbConnection }> {
  const conn = await SmbConnection.connect('127.0.0.1', port, timeoutMs);
  t.teardown(() => conn.close());
  await conn.request(Command.ECHO, Buffer.from([4, 0, 0, 0]));
  const none = { sign: null, encrypt: null };
  const Ctor = SmbClient as unknown as new (init: object) => SmbClient;
  const client = new Ctor({
    conn, dialect: 0x0311, maxReadSize: 8 << 20, maxTransactSize: 8 << 20, signingAlg: 'aes-gmac', cipher: 0, share: 'fake',
    sessionId: 1n, treeId: 1, protection: none, treeProtection: none,
  });
  return { client, conn };
}

const FILE_ID = Buffer.alloc(16, 7);

t.test('credits: a server that grants 3 credits in all gets READs it can pay for (3 × 64 KiB), never a wait for 16', async (t) => {
  const { port, requests } = await scriptedServer(t, (r) => {
    if (r.command === Command.ECHO) return { body: Buffer.from([4, 0, 0, 0]), credits: 3 };
    if (r.command === Command.READ) return { body: readBody(Math.min(r.body.readUInt32LE(4), 1 << 20)), credits: r.creditCharge };
    return { status: Status.NOT_SUPPORTED };
  });
  const { client, conn } = await clientOn(t, port); // 3 credits, after the ECHO
  let timer: NodeJS.Timeout | undefined;
  const data = await Promise.race([
    client.read(FILE_ID, 0, 1 << 20),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error('the READ waited for credits that never come')), 3000); }),
  ]).finally(() => clearTimeout(timer));
  t.equal(data.length, 3 * 65536, 'a short READ of what 3 credits buy');
  t.equal(client.readSize(8), 65536, 'a reader with eight READs in flight on 3 credits reads 64 KiB at a time');
  const read = requests.find((r) => r.command === Command.READ)!;
  t.equal(read.creditCharge, 3, 'charged 3 credits');
  t.equal(read.body.readUInt32LE(4), 3 * 65536, 'and asking for 192 KiB');
  await t.rejects(conn.request(Command.READ, Buffer.alloc(49), { creditCharge: 16 }), { code: 'HF_SOURCE_PROTOCOL' },
    'a request that needs more credits than granted in all fails at once, coded');
});

t.test('an empty directory answered with NO_SUCH_FILE on the first QUERY_DIRECTORY (Windows) lists as empty', async (t) => {
  const { port } = await scriptedServer(t, (r) => {
    if (r.command === Command.QUERY_DIRECTORY) return { status: Status.NO_SUCH_FILE };
    return undefined;
  });
  const { client } = await clientOn(t, port);
  t.same(await client.list(FILE_ID), [], 'an empty listing, not ENOENT');
});

t.test('an interim STATUS_PENDING restarts the request\'s time: a slow final answer is awaited', async (t) => {
  const { port } = await scriptedServer(t, (r) => {
    if (r.command === Command.READ) return { body: readBody(5), interim: { afterMs: 250, finalAfterMs: 550 } };
    return undefined;
  });
  const { client } = await clientOn(t, port, 400);
  t.equal((await client.read(FILE_ID, 0, 5)).toString(), 'aaaaa', 'answered 550 ms in, with a 400 ms timeout: the interim at 250 ms restarted it');
});

t.test('a server that refuses every SMB 2/3 dialect, or drops the connection at NEGOTIATE (SMB 1 only): HF_SOURCE_PROTOCOL', async (t) => {
  const opts = { host: '127.0.0.1', user: 'u', password: 'p', share: 's', timeoutMs: 3000 };
  const refuses = await scriptedServer(t, () => ({ status: Status.NOT_SUPPORTED }));
  await t.rejects(SmbClient.connect({ ...opts, port: refuses.port }), { code: 'HF_SOURCE_PROTOCOL', message: /refused every SMB dialect.*SMB 1/ });
  const drops = await scriptedServer(t, () => 'drop');
  await t.rejects(SmbClient.connect({ ...opts, port: drops.port }), { code: 'HF_SOURCE_PROTOCOL', message: /ended the connection.*SMB 1/ });
});

t.test('LARGE_MTU: without it, READs and directory queries stay within 64 KiB whatever MaxReadSize says', async (t) => {
  const negotiate = (capabilities: number): Smb2Response => {
    const body = Buffer.alloc(65);
    body.writeUInt16LE(65, 0);
    body.writeUInt16LE(0x0210, 4);
    body.writeUInt32LE(capabilities, 24);
    body.writeUInt32LE(8 << 20, 28); // MaxTransactSize
    body.writeUInt32LE(8 << 20, 32); // MaxReadSize
    const message = Buffer.concat([Buffer.alloc(HEADER_SIZE), body]);
    return { header: readHeader(Buffer.alloc(HEADER_SIZE)), message, body: message.subarray(HEADER_SIZE) };
  };
  const without = parseNegotiate(negotiate(0), 'test');
  t.equal(without.maxReadSize, 65536);
  t.equal(without.maxTransactSize, 65536);
  const withMtu = parseNegotiate(negotiate(Capability.LARGE_MTU), 'test');
  t.equal(withMtu.maxReadSize, 8 << 20, 'with LARGE_MTU: what the server announces');
});
