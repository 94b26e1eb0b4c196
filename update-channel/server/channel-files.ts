import path from 'node:path';

/** The files of an update channel's directory (`npm run channel -- init --dir DIR`). */
export function channelFiles(dir: string) {
  const ca = path.join(dir, 'ca');
  const tuf = path.join(dir, 'tuf');
  return {
    /** The fleet database (SQLite). */
    database: path.join(dir, 'fleet.sqlite'),
    /** The vendor CA (appliance/pki layout): boxes' and stores' certificates, the CRL. */
    ca,
    caCert: path.join(ca, 'ca.crt'),
    crl: path.join(ca, 'crl.pem'),
    /** The service's own TLS certificate (OU=fleet), issued by the CA. */
    serverCert: path.join(ca, 'fleet.crt'),
    serverKey: path.join(ca, 'fleet.key'),
    /** The TUF repository with its online keys (update-channel/tuf). */
    tuf,
    tufMetadata: path.join(tuf, 'metadata'),
    tufTargets: path.join(tuf, 'targets'),
    /** The vendor's bearer token for the fleet API and page. */
    vendorToken: path.join(dir, 'vendor.token'),
  };
}
