export { FsStoreBackend, TENANT_NAME, assertTenant } from './fs-store-backend.ts';
// S3StoreBackend itself: import './s3-store-backend.ts' where a bucket is
// used. It loads the AWS SDK (~70 ms and several MB), which no other
// command, job worker or test of the directory backend should pay for.
export type { S3BucketInfo, S3StoreBackend, S3StoreOptions } from './s3-store-backend.ts';
export type { StoreBackend, StoredFile, TenantUsage, TrashEntry, Upload } from './store-backend.ts';
export { StoreServer, type StoreServerOptions, type StoreTls } from './store-server.ts';
export { importSeed } from './seed-import.ts';
