export { type Listing, type ReadBuffers, type ReadManyResult, type Source, type SourceEntry, type SourceStat, joinPath, typeOfMode } from './source.ts';
export { LocalSource } from './local/index.ts';
