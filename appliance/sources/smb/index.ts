export { type SmbSourceOptions, SmbSource, chooseSnapshot, gmtTokenToFiletime } from './smb-source.ts';
export { type SmbClientOptions, SmbClient } from './smb-client.ts';
