export { SftpSource, type SftpOptions } from './sftp-source.ts';
export { HostKeyPins, type HostKeyPinOptions, hostKeyFingerprint, knownHostsName, parseKnownHosts } from './host-keys.ts';
