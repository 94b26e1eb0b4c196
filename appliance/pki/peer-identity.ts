import { HoldfastError } from '../errors/index.ts';
import { CERTIFICATE_NAME, type CertificateKind } from './certificate-names.ts';

/** Who is at the other end of a mutually authenticated connection. */
export interface PeerIdentity {
  name: string;
  kind: CertificateKind;
}

/**
 * What peerIdentity reads: `tlsSocket.getPeerCertificate()` (subject as an
 * object of attributes), or a certificate whose `subject` is a string
 * (node:crypto X509Certificate, "CN=a\nOU=b"; @peculiar/x509, "CN=a, OU=b").
 */
export type CertificateLike =
  | { readonly subject?: string | NodeJS.Dict<string | string[]> | undefined }
  | null
  | undefined;

/**
 * The peer's name (CN) and kind (OU) from a certificate this CA issued.
 * Pure: no I/O, no chain or validity check; call it only on a certificate the
 * TLS handshake has already verified (rejectUnauthorized, or
 * `socket.authorized`). A connection's role MUST be checked by the caller:
 * a store accepts only kind 'appliance'.
 *
 * HF_PKI_INVALID if there is no certificate, CN or OU is missing or repeated,
 * OU is not 'appliance' or 'store', or CN is not a valid certificate name.
 */
export function peerIdentity(cert: CertificateLike): PeerIdentity {
  const subject = cert?.subject;
  let cn: unknown;
  let ou: unknown;
  if (typeof subject === 'string') {
    const attrs = parseSubject(subject);
    cn = attrs.get('CN');
    ou = attrs.get('OU');
  } else if (subject && typeof subject === 'object') {
    cn = subject.CN;
    ou = subject.OU;
  } else {
    throw new HoldfastError('HF_PKI_INVALID', 'the peer presented no certificate');
  }
  const shown = `CN=${JSON.stringify(cn)}, OU=${JSON.stringify(ou)}`;
  if (typeof cn !== 'string' || !CERTIFICATE_NAME.test(cn)) {
    throw new HoldfastError('HF_PKI_INVALID', `the peer certificate (${shown}) has no valid Holdfast name in CN`);
  }
  if (ou !== 'appliance' && ou !== 'store' && ou !== 'fleet') {
    throw new HoldfastError('HF_PKI_INVALID', `the peer certificate (${shown}) is neither an appliance, a store nor a fleet certificate (OU)`);
  }
  return { name: cn, kind: ou };
}

/**
 * "CN=a\nOU=b\nO=c" or "CN=a, OU=b, O=c" → attributes; an attribute given
 * twice maps to an array (never a valid identity).
 */
function parseSubject(s: string): Map<string, string | string[]> {
  const out = new Map<string, string | string[]>();
  for (const part of s.split(/\n|,\s*(?=[A-Za-z0-9.]+=)|\+(?=[A-Za-z0-9.]+=)/)) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    const prev = out.get(key);
    out.set(key, prev === undefined ? value : [...[prev].flat(), value]);
  }
  return out;
}
