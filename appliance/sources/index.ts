export { CHANGED_DURING_READ, type ListManyResult, type Listing, type ReadBuffers, type ReadManyResult, type Source, type SourceEntry, type SourceStat, joinPath, typeOfMode } from './source.ts';
export { LocalSource } from './local/index.ts';
export { type SourceCredentials, type SourceSpec, openSource, parseSourceArgs, parseSourceUrl } from './source-url.ts';
