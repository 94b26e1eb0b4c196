import { createPrivateKey, randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { CERTIFICATE_NAME, type CertificateKind } from './certificate-names.ts';
import { readPem, writeFileAtomic } from './pem-file.ts';
import { webcrypto, x509 } from './x509.ts';

/** Names that would collide with the CA's own files. */
const RESERVED_NAMES = new Set(['ca', 'crl']);

const CA_DAYS = 3650;
const CERT_DAYS = 825;
const BACKDATE_MS = 5 * 60_000;
const DAY_MS = 86_400_000;
const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;
const OID_CRL_NUMBER = '2.5.29.20';

export interface InitCaOptions {
  /** The CA's common name. Default "Holdfast CA". */
  name?: string;
  /** Validity in days from now. Default 3650. */
  days?: number;
}

export interface IssueOptions {
  /** Certificate name (CN, and the file names): /^[a-z0-9][a-z0-9-]{0,62}$/, not "ca" or "crl". */
  name: string;
  kind: CertificateKind;
  /** Validity in days from notBefore. Default 825. Ignored when notAfter is given. */
  days?: number;
  /** Default now minus 5 minutes (tolerates clock skew between boxes). */
  notBefore?: Date;
  notAfter?: Date;
  /**
   * Store certificates only: DNS names and IP addresses for subjectAltName.
   * Default ['localhost'] plus the IPs 127.0.0.1 and ::1.
   */
  hosts?: readonly string[];
}

export interface IssuedCertificate {
  certFile: string;
  keyFile: string;
  /** Hexadecimal serial number, as in the CRL. */
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
}

/**
 * Creates a certificate authority in `dir`: ca.crt (self-signed, ECDSA P-256,
 * CA:true critical, keyCertSign + cRLSign, subject CN=<name>,O=Holdfast),
 * ca.key (PKCS#8, mode 0600) and an empty CRL crl.pem signed by the CA, so a
 * store can always be started with a CRL. `dir` is created with mode 0700 if
 * missing.
 *
 * MUST NOT replace an existing CA: HF_PKI_EXISTS if ca.key or ca.crt exists.
 * An existing crl.pem without a CA is stale and is replaced.
 */
export async function initCa(dir: string, opts: InitCaOptions = {}): Promise<{ certFile: string; keyFile: string; crlFile: string }> {
  const name = opts.name ?? 'Holdfast CA';
  if (typeof name !== 'string' || name.trim() === '' || name.length > 64) {
    throw new HoldfastError('HF_PKI_INVALID', `CA name ${JSON.stringify(name)} is not valid: give 1 to 64 characters`);
  }
  const days = checkDays(opts.days ?? CA_DAYS, 'CA validity');
  const certFile = path.join(dir, 'ca.crt');
  const keyFile = path.join(dir, 'ca.key');
  const crlFile = path.join(dir, 'crl.pem');
  try {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw ioError(`cannot create the PKI directory ${dir}`, err);
  }
  for (const f of [keyFile, certFile]) await refuseExisting(f, 'a CA');

  const keys = await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const notBefore = new Date(Date.now() - BACKDATE_MS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [name] }, { O: ['Holdfast'] }],
    notBefore,
    notAfter: new Date(notBefore.getTime() + days * DAY_MS),
    keys,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  // The key first: a ca.crt without its key would be a CA nobody can use.
  await writeFileAtomic(keyFile, await privateKeyPem(keys.privateKey), { mode: 0o600, exclusive: true });
  await writeFileAtomic(certFile, cert.toString('pem') + '\n', { mode: 0o644, exclusive: true });
  const crl = await signCrl(cert, keys.privateKey, [], 1n);
  await writeFileAtomic(crlFile, crl, { mode: 0o644, exclusive: false });
  return { certFile, keyFile, crlFile };
}

/**
 * Issues a certificate signed by dir/ca.key: dir/NAME.crt and dir/NAME.key
 * (ECDSA P-256, PKCS#8, mode 0600). Subject CN=<name>,OU=<kind>,O=Holdfast;
 * CA:false; keyUsage digitalSignature; extendedKeyUsage clientAuth only for an
 * appliance, serverAuth only for a store (so neither can act as the other);
 * store certificates carry subjectAltName for `hosts`. Serial: 16 random bytes,
 * positive.
 *
 * MUST NOT overwrite: HF_PKI_EXISTS if NAME.crt or NAME.key exists.
 * HF_PKI_INVALID for a bad name, kind, host or validity; HF_PKI_NOT_FOUND when
 * the CA is missing.
 */
export async function issueCertificate(dir: string, opts: IssueOptions): Promise<IssuedCertificate> {
  const name = checkName(opts.name);
  const kind = opts.kind;
  if (kind !== 'appliance' && kind !== 'store' && kind !== 'fleet') {
    throw new HoldfastError('HF_PKI_INVALID', `certificate kind ${JSON.stringify(kind)} is not valid: use 'appliance', 'store' or 'fleet'`);
  }
  if (kind === 'appliance' && opts.hosts !== undefined) {
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${name}: hosts are for server (store, fleet) certificates only`);
  }
  const notBefore = opts.notBefore ?? new Date(Date.now() - BACKDATE_MS);
  if (!(notBefore instanceof Date) || Number.isNaN(notBefore.getTime())) {
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${name}: notBefore is not a valid date`);
  }
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + checkDays(opts.days ?? CERT_DAYS, 'certificate validity') * DAY_MS);
  if (!(notAfter instanceof Date) || Number.isNaN(notAfter.getTime()) || notAfter <= notBefore) {
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${name}: notAfter must be a date after notBefore`);
  }
  const sanNames = kind !== 'appliance' ? subjectAltNames(name, opts.hosts) : undefined;
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  const ca = await loadCa(dir);
  for (const f of [keyFile, certFile]) await refuseExisting(f, `certificate ${name}`);

  const keys = await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const cert = await signLeaf(ca, keys.publicKey, { name, kind, notBefore, notAfter, sanNames });
  await writeFileAtomic(keyFile, await privateKeyPem(keys.privateKey), { mode: 0o600, exclusive: true });
  try {
    await writeFileAtomic(certFile, cert.toString('pem') + '\n', { mode: 0o644, exclusive: true });
  } catch (err) {
    // Lost a race for NAME.crt: do not leave our key beside someone else's certificate.
    await fsp.unlink(keyFile).catch(() => undefined);
    throw err;
  }
  return { certFile, keyFile, serialNumber: cert.serialNumber, notBefore: cert.notBefore, notAfter: cert.notAfter };
}

/** A leaf certificate for `publicKey`, signed by the CA: see issueCertificate for its contents. */
async function signLeaf(ca: { cert: x509.X509Certificate; key: CryptoKey }, publicKey: CryptoKey,
  o: { name: string; kind: CertificateKind; notBefore: Date; notAfter: Date; sanNames: x509.JsonGeneralNames | undefined }): Promise<x509.X509Certificate> {
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension(
      [o.kind === 'appliance' ? x509.ExtendedKeyUsage.clientAuth : x509.ExtendedKeyUsage.serverAuth], false),
    await x509.SubjectKeyIdentifierExtension.create(publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert, false),
  ];
  if (o.sanNames) extensions.push(new x509.SubjectAlternativeNameExtension(o.sanNames, false));
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [o.name] }, { OU: [o.kind] }, { O: ['Holdfast'] }],
    issuer: ca.cert.subjectName,
    notBefore: o.notBefore,
    notAfter: o.notAfter,
    publicKey,
    signingKey: ca.key,
    signingAlgorithm: SIGNING,
    extensions,
  });
}

/**
 * A certificate request made on the box: a new ECDSA P-256 key (PKCS#8 PEM,
 * the caller writes it, mode 0600, and it never leaves the box) and a PKCS#10
 * request signed by it. The subject is only a hint: the CA names the
 * certificate (issueFromRequest).
 */
export async function makeCertificateRequest(name: string): Promise<{ keyPem: string; csrPem: string }> {
  checkName(name);
  const keys = await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [name] }], keys, signingAlgorithm: SIGNING,
  });
  return { keyPem: await privateKeyPem(keys.privateKey), csrPem: csr.toString('pem') + '\n' };
}

/**
 * Issues an appliance certificate for the public key in a PKCS#10 request
 * (enrollment: the key stays on the box). The request's signature MUST
 * verify (proof that the requester holds the key) and the key MUST be ECDSA
 * P-256, else HF_ENROLL_CSR; the subject the request asks for is ignored:
 * the certificate is CN=<name>,OU=appliance,O=Holdfast like issueCertificate's.
 * Nothing is written: the caller keeps the certificate (PEM) and its serial
 * for revocation (revokeSerial).
 */
export async function issueFromRequest(dir: string, csrPem: string, o: { name: string; days?: number }): Promise<{ certPem: string; serialNumber: string; notBefore: Date; notAfter: Date }> {
  const name = checkName(o.name);
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (cause) {
    throw new HoldfastError('HF_ENROLL_CSR', 'the certificate request is not a PEM PKCS#10 request', { cause });
  }
  if (!(await csr.verify().catch(() => false))) throw new HoldfastError('HF_ENROLL_CSR', 'the certificate request is not signed by its own key');
  let publicKey: CryptoKey;
  try {
    publicKey = await csr.publicKey.export(EC_KEY, ['verify'], webcrypto);
  } catch (cause) {
    throw new HoldfastError('HF_ENROLL_CSR', 'the certificate request\'s key is not ECDSA P-256', { cause });
  }
  const ca = await loadCa(dir);
  const notBefore = new Date(Date.now() - BACKDATE_MS);
  const notAfter = new Date(notBefore.getTime() + checkDays(o.days ?? CERT_DAYS, 'certificate validity') * DAY_MS);
  const cert = await signLeaf(ca, publicKey, { name, kind: 'appliance', notBefore, notAfter, sanNames: undefined });
  return { certPem: cert.toString('pem') + '\n', serialNumber: cert.serialNumber, notBefore: cert.notBefore, notAfter: cert.notAfter };
}

/**
 * Revokes dir/NAME.crt: adds its serial to the CA's CRL and rewrites
 * dir/crl.pem atomically (temp, fsync, rename). Earlier revocations are kept:
 * the existing crl.pem is the list, and its signature is checked against the
 * CA before it is trusted. Revoking twice is harmless (the CRL is re-signed).
 * The CRL's nextUpdate is the CA's notAfter: a CRL past nextUpdate makes
 * OpenSSL refuse every peer, and this CRL is handed to stores by the admin,
 * not fetched on a schedule.
 *
 * A store must reload crl.pem (a new secure context) for the revocation to
 * take effect. HF_PKI_INVALID if NAME.crt was not issued by this CA.
 */
export async function revokeCertificate(dir: string, name: string): Promise<{ crlFile: string; serialNumber: string }> {
  checkName(name);
  const ca = await loadCa(dir);
  const certFile = path.join(dir, `${name}.crt`);
  const cert = parseCertificate(await readPem(certFile, 'certificate'), certFile);
  if (!(await cert.verify({ publicKey: ca.cert, signatureOnly: true }).catch(() => false))) {
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${certFile} was not issued by the CA in ${dir}; nothing revoked`);
  }
  return { crlFile: await revokeSerial(dir, cert.serialNumber, ca), serialNumber: cert.serialNumber };
}

/**
 * Adds a serial number (hex) to dir/crl.pem, keeping earlier entries (see
 * revokeCertificate): for certificates the CA issued without a file
 * (issueFromRequest). Returns the CRL's path.
 */
export async function revokeSerial(dir: string, serialNumber: string, loaded?: { cert: x509.X509Certificate; key: CryptoKey }): Promise<string> {
  if (!/^[0-9a-f]{2,40}$/i.test(serialNumber)) throw new HoldfastError('HF_PKI_INVALID', `serial number ${JSON.stringify(serialNumber)} is not hexadecimal`);
  const ca = loaded ?? await loadCa(dir);
  const crlFile = path.join(dir, 'crl.pem');
  const crlPem = await readPem(crlFile, 'CRL');
  let old: x509.X509Crl;
  try {
    old = new x509.X509Crl(crlPem);
  } catch (err) {
    throw new HoldfastError('HF_PKI_INVALID', `CRL ${crlFile} cannot be parsed: restore it from a backup before revoking`, { cause: err });
  }
  if (!(await old.verify({ publicKey: ca.cert }).catch(() => false))) {
    throw new HoldfastError('HF_PKI_INVALID', `CRL ${crlFile} is not signed by the CA in ${dir}: restore it from a backup before revoking`);
  }
  // Each entry carries an invalidityDate (= the revocation time): without an
  // entry extension @peculiar/x509 writes an empty crlEntryExtensions
  // SEQUENCE, which RFC 5280 forbids (SIZE 1..MAX) and strict parsers reject.
  const entries: x509.X509CrlEntryParams[] = old.entries.map((e) =>
    ({ serialNumber: e.serialNumber, revocationDate: e.revocationDate, invalidity: e.invalidity ?? e.revocationDate }));
  if (!entries.some((e) => e.serialNumber.toLowerCase() === serialNumber.toLowerCase())) {
    const now = new Date(Math.floor(Date.now() / 1000) * 1000); // GeneralizedTime without fractions
    entries.push({ serialNumber, revocationDate: now, invalidity: now });
  }
  const number = crlNumber(old) + 1n;
  await writeFileAtomic(crlFile, await signCrl(ca.cert, ca.key, entries, number), { mode: 0o644, exclusive: false });
  return crlFile;
}

/**
 * A self-signed TLS server certificate for the web console, made on its
 * first start: ECDSA P-256, CN=<hosts[0]>, subjectAltName for every host
 * (DNS names and IP addresses), EKU serverAuth, valid `days` (default 825).
 * Writes keyFile (0600) then certFile; an existing pair is kept as it is
 * (returns false).
 */
export async function ensureSelfSignedServer(certFile: string, keyFile: string, hosts: readonly string[], days = CERT_DAYS): Promise<boolean> {
  const have = await Promise.all([certFile, keyFile].map((f) => fsp.stat(f).then(() => true, () => false)));
  if (have[0] && have[1]) return false;
  const sanNames = subjectAltNames('console', [...new Set(hosts)]);
  const keys = await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const notBefore = new Date(Date.now() - BACKDATE_MS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [hosts[0] ?? 'localhost'] }, { O: ['Holdfast console'] }],
    notBefore,
    notAfter: new Date(notBefore.getTime() + checkDays(days, 'certificate validity') * DAY_MS),
    keys,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
      new x509.SubjectAlternativeNameExtension(sanNames, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  await fsp.mkdir(path.dirname(certFile), { recursive: true, mode: 0o700 });
  await writeFileAtomic(keyFile, await privateKeyPem(keys.privateKey), { mode: 0o600, exclusive: false });
  await writeFileAtomic(certFile, cert.toString('pem') + '\n', { mode: 0o644, exclusive: false });
  return true;
}

function checkName(name: unknown): string {
  if (typeof name !== 'string' || !CERTIFICATE_NAME.test(name) || RESERVED_NAMES.has(name)) {
    throw new HoldfastError('HF_PKI_INVALID',
      `certificate name ${JSON.stringify(name)} is not valid: use 1 to 63 lower-case letters, digits and '-', not starting with '-' (and not 'ca' or 'crl')`);
  }
  return name;
}

function checkDays(days: number, what: string): number {
  if (!Number.isSafeInteger(days) || days < 1) {
    throw new HoldfastError('HF_PKI_INVALID', `${what} of ${days} days is not valid: give a whole number of days, at least 1`);
  }
  return days;
}

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

function subjectAltNames(name: string, hosts: readonly string[] | undefined): x509.JsonGeneralNames {
  if (hosts === undefined) {
    return [{ type: 'dns', value: 'localhost' }, { type: 'ip', value: '127.0.0.1' }, { type: 'ip', value: '::1' }];
  }
  if (!Array.isArray(hosts) || hosts.length === 0) {
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${name}: hosts must list at least one DNS name or IP address`);
  }
  return hosts.map((h): x509.JsonGeneralName => {
    if (typeof h === 'string' && net.isIP(h) !== 0) return { type: 'ip', value: h };
    if (typeof h === 'string' && DNS_NAME.test(h)) return { type: 'dns', value: h.toLowerCase() };
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${name}: host ${JSON.stringify(h)} is neither a DNS name nor an IP address`);
  });
}

async function refuseExisting(file: string, what: string): Promise<void> {
  try {
    await fsp.lstat(file);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return;
    throw ioError(`cannot check ${file}`, err);
  }
  throw new HoldfastError('HF_PKI_EXISTS', `${what} already exists: ${file} is not overwritten (remove it first if you mean to replace it)`);
}

/** 16 random bytes, first byte 0x01..0x7f: positive and exactly 16 bytes in DER. */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) || 0x01;
  return b.toString('hex');
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY') + '\n';
}

function parseCertificate(pem: string, file: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch (err) {
    throw new HoldfastError('HF_PKI_INVALID', `${file} is not a valid certificate`, { cause: err });
  }
}

async function loadCa(dir: string): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  const certFile = path.join(dir, 'ca.crt');
  const keyFile = path.join(dir, 'ca.key');
  const cert = parseCertificate(await readPem(certFile, 'CA certificate'), certFile);
  const keyPem = await readPem(keyFile, 'CA key');
  let key: CryptoKey;
  try {
    const ko = createPrivateKey(keyPem);
    if (ko.asymmetricKeyType !== 'ec' || ko.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
      throw new Error(`a ${ko.asymmetricKeyType} key, not ECDSA P-256`);
    }
    key = ko.toCryptoKey(EC_KEY, false, ['sign']) as CryptoKey;
  } catch (err) {
    throw new HoldfastError('HF_PKI_INVALID', `CA key ${keyFile} cannot be used: ${(err as Error).message}`, { cause: err });
  }
  return { cert, key };
}

async function signCrl(ca: x509.X509Certificate, key: CryptoKey, entries: x509.X509CrlEntryParams[], number: bigint): Promise<string> {
  const crl = await x509.X509CrlGenerator.create({
    issuer: ca.subjectName,
    thisUpdate: new Date(Date.now() - BACKDATE_MS),
    nextUpdate: ca.notAfter,
    signingKey: key,
    signingAlgorithm: SIGNING,
    entries,
    extensions: [
      await x509.AuthorityKeyIdentifierExtension.create(ca, false),
      new x509.Extension(OID_CRL_NUMBER, false, derInteger(number)),
    ],
  });
  // OpenSSL reads only the "X509 CRL" PEM label; @peculiar/x509 writes "CRL".
  return x509.PemConverter.encode(crl.rawData, 'X509 CRL') + '\n';
}

/** DER INTEGER for a non-negative number. */
function derInteger(n: bigint): Uint8Array {
  let hex = n.toString(16);
  if (hex.length % 2) hex = '0' + hex;
  if (parseInt(hex.slice(0, 2), 16) & 0x80) hex = '00' + hex;
  const body = Buffer.from(hex, 'hex');
  return Uint8Array.from([0x02, body.length, ...body]);
}

/** The CRL's cRLNumber, 0 when absent or unreadable. */
function crlNumber(crl: x509.X509Crl): bigint {
  const ext = crl.getExtension(OID_CRL_NUMBER);
  if (!ext) return 0n;
  const v = new Uint8Array(ext.value);
  if (v[0] !== 0x02 || v[1] === undefined || v[1] > 20 || v.length !== v[1] + 2) return 0n;
  return BigInt('0x' + (Buffer.from(v.subarray(2)).toString('hex') || '0'));
}
