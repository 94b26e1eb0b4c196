// The certificate authority's functions load @peculiar/x509 (and its
// dependencies: about 20 MB of memory and 0.15 s) on first use, not with
// this module: a store reading a peer's identity or a backup never needs it.
import type * as Authority from './certificate-authority.ts';

export type { InitCaOptions, IssueOptions, IssuedCertificate } from './certificate-authority.ts';
export { CERTIFICATE_NAME, type CertificateKind } from './certificate-names.ts';
export { peerIdentity, type CertificateLike, type PeerIdentity } from './peer-identity.ts';
export { readPem, type PemKind } from './pem-file.ts';

const authority = (): Promise<typeof Authority> => import('./certificate-authority.ts');

/** See certificate-authority.ts. */
export const initCa: typeof Authority.initCa = async (...args) => (await authority()).initCa(...args);
/** See certificate-authority.ts. */
export const issueCertificate: typeof Authority.issueCertificate = async (...args) => (await authority()).issueCertificate(...args);
/** See certificate-authority.ts. */
export const ensureSelfSignedServer: typeof Authority.ensureSelfSignedServer = async (...args) => (await authority()).ensureSelfSignedServer(...args);
/** See certificate-authority.ts. */
export const revokeCertificate: typeof Authority.revokeCertificate = async (...args) => (await authority()).revokeCertificate(...args);
/** See certificate-authority.ts. */
export const makeCertificateRequest: typeof Authority.makeCertificateRequest = async (...args) => (await authority()).makeCertificateRequest(...args);
/** See certificate-authority.ts. */
export const issueFromRequest: typeof Authority.issueFromRequest = async (...args) => (await authority()).issueFromRequest(...args);
/** See certificate-authority.ts. */
export const revokeSerial = async (dir: string, serialNumber: string): Promise<string> => (await authority()).revokeSerial(dir, serialNumber);
