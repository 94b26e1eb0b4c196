export {
  CHANNELS, type Channel, EXPIRY_SECONDS, type InitTufRepositoryOptions, type InitTufRepositoryResult, type MetadataVersions,
  type PublishReleaseOptions, type PublishResult, RELEASE_VERSION, ROOT_KEYS, ROOT_THRESHOLD, type RefreshSnapshotOptions,
  type RefreshTimestampOptions, type RefreshTimestampResult, type Release, type RotateRootKeysOptions, type RotateRootKeysResult, compareVersions,
  initTufRepository, listReleases, publishRelease, refreshSnapshot, refreshTimestamp, releasePath, rotateRootKeys, targetFileName,
} from './tuf-repository.ts';
export { type TufKey, type TufRole, readTufKeys } from './tuf-keys.ts';
export { CONFIG_FILE, repositoryPaths } from './repository-state.ts';
