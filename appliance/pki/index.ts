export {
  CERTIFICATE_NAME,
  initCa,
  issueCertificate,
  revokeCertificate,
  type CertificateKind,
  type InitCaOptions,
  type IssueOptions,
  type IssuedCertificate,
} from './certificate-authority.ts';
export { peerIdentity, type CertificateLike, type PeerIdentity } from './peer-identity.ts';
export { readPem, type PemKind } from './pem-file.ts';
