import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';

import t, { type Test } from 'tap';

import { initCa, issueCertificate, peerIdentity, readPem, revokeCertificate } from '../appliance/pki/index.ts';
import { tmpDir } from './helpers/tmp.ts';

interface Outcome {
  /** The server accepted the client and read its identity. */
  identity?: { name: string; kind: string };
  /** The server refused the client (its tlsClientError). */
  serverError?: NodeJS.ErrnoException;
  /** Why: OpenSSL's verify result, as node's tlsSocket.authorizationError. */
  authorizationError?: string;
  clientError?: NodeJS.ErrnoException;
  /** The client read the server's greeting. */
  greeted: boolean;
  protocol?: string | null;
}

const read = (dir: string, file: string) => fs.readFileSync(path.join(dir, file));

function storeContext(dir: string, name: string): tls.SecureContextOptions {
  return { cert: read(dir, `${name}.crt`), key: read(dir, `${name}.key`), ca: read(dir, 'ca.crt'), crl: read(dir, 'crl.pem') };
}

/** A store-like server: mutual TLS 1.3, CA and CRL from dir, closed when the test ends. */
async function startStore(t: Test, dir: string, name: string): Promise<{ server: tls.Server; port: number; connect(client: { dir: string; name: string }): Promise<Outcome> }> {
  const sockets = new Set<net.Socket>();
  const server = tls.createServer({
    ...storeContext(dir, name),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
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
  const port = (server.address() as net.AddressInfo).port;

  const connect = async (client: { dir: string; name: string }): Promise<Outcome> => {
    const outcome: Outcome = { greeted: false };
    // The server's side: exactly one of these per connection.
    const serverSide = new Promise<void>((resolve) => {
      const onSecure = (s: tls.TLSSocket) => {
        off();
        outcome.identity = peerIdentity(s.getPeerCertificate());
        s.end('hello from the store\n');
        resolve();
      };
      const onError = (err: NodeJS.ErrnoException, s: tls.TLSSocket) => {
        off();
        outcome.serverError = err;
        outcome.authorizationError = String(s.authorizationError);
        resolve();
      };
      const off = () => {
        server.off('secureConnection', onSecure);
        server.off('tlsClientError', onError);
      };
      server.on('secureConnection', onSecure);
      server.on('tlsClientError', onError);
    });
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      cert: read(client.dir, `${client.name}.crt`),
      key: read(client.dir, `${client.name}.key`),
      ca: read(dir, 'ca.crt'),
      minVersion: 'TLSv1.3',
    });
    const clientSide = new Promise<void>((resolve) => {
      socket.on('secureConnect', () => { outcome.protocol = socket.getProtocol(); });
      socket.on('data', () => { outcome.greeted = true; });
      socket.on('error', (err: NodeJS.ErrnoException) => { outcome.clientError = err; });
      socket.on('close', () => resolve());
    });
    try {
      await Promise.all([serverSide, clientSide]);
    } finally {
      socket.destroy();
    }
    return outcome;
  };
  return { server, port, connect };
}

t.test('a CA issues appliance and store certificates; files are private and never overwritten', async (t) => {
  const dir = path.join(tmpDir(t), 'pki');
  await initCa(dir);
  t.equal(fs.statSync(dir).mode & 0o777, 0o700, 'the PKI directory is created 0700');
  await t.rejects(initCa(dir), { code: 'HF_PKI_EXISTS' }, 'a second CA is refused');
  await issueCertificate(dir, { name: 'box-1', kind: 'appliance' });
  await issueCertificate(dir, { name: 'store-a', kind: 'store', hosts: ['store.example.net', '192.0.2.7'] });
  for (const f of ['ca.key', 'box-1.key', 'store-a.key']) {
    t.equal(fs.statSync(path.join(dir, f)).mode & 0o777, 0o600, `${f} is mode 0600`);
  }
  t.same(fs.readdirSync(dir).filter((f) => f.includes('.tmp-')), [], 'no temporary files left');

  const ca = new X509Certificate(read(dir, 'ca.crt'));
  t.ok(ca.ca, 'ca.crt is a CA');
  t.equal(ca.subject, 'CN=Holdfast CA\nO=Holdfast');
  const box = new X509Certificate(read(dir, 'box-1.crt'));
  t.equal(box.subject, 'CN=box-1\nOU=appliance\nO=Holdfast');
  t.notOk(box.ca, 'an appliance certificate is not a CA');
  t.ok(box.checkIssued(ca) && box.verify(ca.publicKey), 'signed by the CA');
  t.equal(box.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1', 'ECDSA P-256');
  t.same(box.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'appliance: EKU clientAuth only');
  t.equal(box.subjectAltName, undefined, 'an appliance has no subjectAltName');
  t.equal(box.serialNumber.length, 32, 'a 16-byte serial');
  t.ok(parseInt(box.serialNumber.slice(0, 2), 16) < 0x80, 'the serial is positive');
  const days = (Date.parse(box.validTo) - Date.parse(box.validFrom)) / 86_400_000;
  t.equal(Math.round(days), 825, 'valid 825 days by default');
  t.ok(Date.parse(box.validFrom) < Date.now() - 60_000, 'notBefore is backdated for clock skew');
  const store = new X509Certificate(read(dir, 'store-a.crt'));
  t.same(store.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'store: EKU serverAuth only');
  t.equal(store.subjectAltName, 'DNS:store.example.net, IP Address:192.0.2.7', 'hosts become DNS and IP SANs');
  t.same(peerIdentity(store), { name: 'store-a', kind: 'store' }, 'peerIdentity reads a node:crypto X509Certificate');

  const before = [read(dir, 'box-1.crt'), read(dir, 'box-1.key')];
  await t.rejects(issueCertificate(dir, { name: 'box-1', kind: 'appliance' }), { code: 'HF_PKI_EXISTS' }, 'no overwrite');
  await t.rejects(issueCertificate(dir, { name: 'box-1', kind: 'store' }), { code: 'HF_PKI_EXISTS' }, 'not as another kind either');
  t.same([read(dir, 'box-1.crt'), read(dir, 'box-1.key')], before, 'the refused issues left box-1 as it was');
  for (const bad of ['Box', '-x', 'a_b', 'a'.repeat(64), '', 'ca', 'crl', '../etc', 'a.b']) {
    await t.rejects(issueCertificate(dir, { name: bad, kind: 'appliance' }), { code: 'HF_PKI_INVALID' }, `name ${JSON.stringify(bad)} is refused`);
  }
  await t.rejects(issueCertificate(dir, { name: 'x', kind: 'admin' as 'store' }), { code: 'HF_PKI_INVALID' }, 'an unknown kind is refused');
  await t.rejects(issueCertificate(dir, { name: 'x', kind: 'store', hosts: ['bad host'] }), { code: 'HF_PKI_INVALID' }, 'a bad host is refused');
  t.notOk(fs.existsSync(path.join(dir, 'x.key')), 'nothing written for a refused request');

  const empty = path.join(tmpDir(t), 'nothing');
  await t.rejects(issueCertificate(empty, { name: 'box-2', kind: 'appliance' }),
    { code: 'HF_PKI_NOT_FOUND', message: /ca\.crt.*holdfast pki init/ }, 'issuing without a CA says how to make one');
  await t.rejects(readPem(path.join(dir, 'nobody.crt'), 'certificate'),
    { code: 'HF_PKI_NOT_FOUND', message: /nobody\.crt.*holdfast pki issue/ });
  await t.rejects(revokeCertificate(dir, 'nobody'), { code: 'HF_PKI_NOT_FOUND' });
});

t.test('mutual TLS 1.3: the store accepts its appliances and refuses everything else at the handshake', async (t) => {
  const dir = path.join(tmpDir(t), 'pki');
  await initCa(dir);
  await issueCertificate(dir, { name: 'store-a', kind: 'store' });
  await issueCertificate(dir, { name: 'box-1', kind: 'appliance' });
  await issueCertificate(dir, { name: 'box-2', kind: 'appliance' });
  await issueCertificate(dir, { name: 'box-3', kind: 'appliance' });
  await issueCertificate(dir, { name: 'store-b', kind: 'store' });
  const day = 86_400_000;
  await issueCertificate(dir, { name: 'box-old', kind: 'appliance', notBefore: new Date(Date.now() - 3 * day), notAfter: new Date(Date.now() - day) });
  const other = path.join(tmpDir(t), 'other-pki');
  await initCa(other, { name: 'Holdfast CA' }); // same subject, different key: only the signature tells them apart
  await issueCertificate(other, { name: 'box-1', kind: 'appliance' });

  // The server starts with the empty CRL written by initCa: with a CRL loaded
  // OpenSSL checks every certificate against it, so the CRL must exist and parse.
  const store = await startStore(t, dir, 'store-a');

  const ok = await store.connect({ dir, name: 'box-1' });
  t.equal(ok.protocol, 'TLSv1.3');
  t.ok(ok.greeted, 'the appliance reads the store\'s greeting');
  t.same(ok.identity, { name: 'box-1', kind: 'appliance' }, 'peerIdentity names the appliance');
  t.equal(ok.serverError, undefined);

  // A refused client: OpenSSL verifies the chain (signature, validity, CRL,
  // purpose), node reads the result after the handshake and, with
  // rejectUnauthorized, destroys the socket: no secureConnection, and no TLS
  // alert either. Under TLS 1.3 the client has already seen 'secureConnect'
  // and only sees the connection end, so a client MUST wait for the store's
  // first message before it counts itself accepted.
  const refused = async (who: { dir: string; name: string }, what: string, reason: string) => {
    const o = await store.connect(who);
    t.equal(o.identity, undefined, `${what}: the server never sees a secure connection`);
    t.notOk(o.greeted, `${what}: no application data reaches the client`);
    t.ok(o.serverError, `${what}: the server reports a tlsClientError`);
    t.equal(o.authorizationError, reason, `${what}: refused by OpenSSL with ${reason}`);
    return o;
  };
  await refused({ dir: other, name: 'box-1' }, 'a certificate from another CA', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  await refused({ dir, name: 'box-old' }, 'an expired certificate', 'CERT_HAS_EXPIRED');
  // EKU: OpenSSL verifies a client certificate for the purpose "SSL client",
  // so a serverAuth-only certificate fails the chain check on the server.
  await refused({ dir, name: 'store-b' }, 'a store certificate used as a client', 'INVALID_PURPOSE');

  // Revocation: written to crl.pem, effective once the server loads it into a
  // new secure context (the CRL is part of the context, read once).
  await revokeCertificate(dir, 'box-2');
  t.ok((await store.connect({ dir, name: 'box-2' })).greeted, 'a revocation is not seen until the store reloads the CRL');
  store.server.setSecureContext({ ...storeContext(dir, 'store-a') });
  await refused({ dir, name: 'box-2' }, 'a revoked certificate', 'CERT_REVOKED');
  await revokeCertificate(dir, 'box-3');
  await revokeCertificate(dir, 'box-3');
  store.server.setSecureContext({ ...storeContext(dir, 'store-a') });
  await refused({ dir, name: 'box-2' }, 'an earlier revocation after a later one', 'CERT_REVOKED');
  await refused({ dir, name: 'box-3' }, 'a certificate revoked twice', 'CERT_REVOKED');
  const still = await store.connect({ dir, name: 'box-1' });
  t.same(still.identity, { name: 'box-1', kind: 'appliance' }, 'others still connect after revocations');
  fs.copyFileSync(path.join(other, 'box-1.crt'), path.join(dir, 'stranger.crt'));
  await t.rejects(revokeCertificate(dir, 'stranger'), { code: 'HF_PKI_INVALID' }, 'a certificate from another CA cannot be revoked here');
});

t.test('peerIdentity reads CN and OU and refuses anything else', async (t) => {
  t.same(peerIdentity({ subject: { CN: 'box-1', OU: 'appliance', O: 'Holdfast' } }), { name: 'box-1', kind: 'appliance' });
  t.same(peerIdentity({ subject: 'CN=store-a, OU=store, O=Holdfast' }), { name: 'store-a', kind: 'store' }, '@peculiar/x509 subject string');
  const bad: [string, unknown][] = [
    ['no certificate (getPeerCertificate() of an anonymous peer)', {}],
    ['null', null],
    ['no OU', { subject: { CN: 'box-1', O: 'Holdfast' } }],
    ['no CN', { subject: { OU: 'appliance' } }],
    ['an unknown OU', { subject: { CN: 'box-1', OU: 'admin' } }],
    ['two OUs', { subject: { CN: 'box-1', OU: ['appliance', 'store'] } }],
    ['two CNs', { subject: 'CN=a\nCN=b\nOU=store' }],
    ['a CN that is not a certificate name', { subject: { CN: 'Box 1', OU: 'appliance' } }],
  ];
  for (const [what, cert] of bad) {
    t.throws(() => peerIdentity(cert as Parameters<typeof peerIdentity>[0]), { code: 'HF_PKI_INVALID' }, what);
  }
});
