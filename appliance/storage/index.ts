export { FILE_TYPES, type FileInfo, type FileType, type FileWriter, type SaveOptions, type Storage, validName } from './storage.ts';
export { LocalStorage, filePath, syncDir } from './local-storage.ts';
export { MemoryStorage } from './memory-storage.ts';
export { FaultyStorage, type FaultRule, type Operation } from './faulty-storage.ts';
export { writeFileAtomic } from './write-file-atomic.ts';
