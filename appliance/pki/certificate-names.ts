/** What a certificate is for: an appliance is a TLS client; a store and the fleet service are TLS servers. */
export type CertificateKind = 'appliance' | 'store' | 'fleet';

/** Certificate names: also the file names NAME.crt and NAME.key. */
export const CERTIFICATE_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
