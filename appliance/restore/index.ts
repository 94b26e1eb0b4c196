export { type RestoreOptions, type RestoreResult, type RestoreStats, type RestoreWarning, type RestoreWarningCode, restore } from './restorer.ts';
