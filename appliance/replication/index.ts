export { type CloneResult, cloneRepository } from './clone.ts';
export { RateLimiter, TokenBucket, parseRate, parseWindows, rateAt } from './rate-limit.ts';
export { RemoteStorage } from './remote-storage.ts';
export { type LocalFile, type ReplicationProgress, type ReplicationResult, localFiles, replicate } from './replicator.ts';
export { SEED_MANIFEST, exportSeed } from './seed-export.ts';
export { type ClientTls, type Endpoint, StoreConnection, endpointText } from './store-connection.ts';
export { TargetClient } from './target-client.ts';
export { type TargetRun, type TargetStatus, replicateTargets, targetBucket, targetClient, targetStatus, targetTls } from './target-runner.ts';
export { TARGET_NAME, type TargetConfig, TargetRegistry, type TargetState, parseEndpoints } from './targets.ts';
