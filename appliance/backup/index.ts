export { type ArchiveStats, Archiver, type BackupWarning, type WarningCode } from './archiver.ts';
export { type BackupOptions, type BackupResult, PROGRAM, backup, normalizePaths } from './backup.ts';
