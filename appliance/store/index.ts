export { FsStoreBackend, TENANT_NAME, assertTenant } from './fs-store-backend.ts';
export { S3StoreBackend, type S3BucketInfo, type S3StoreOptions } from './s3-store-backend.ts';
export type { StoreBackend, StoredFile, TenantUsage, TrashEntry, Upload } from './store-backend.ts';
export { StoreServer, type StoreServerOptions, type StoreTls } from './store-server.ts';
export { importSeed } from './seed-import.ts';
