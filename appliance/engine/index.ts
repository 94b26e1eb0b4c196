export { type ApiRoute, apiRoutes } from './api.ts';
export { type Actor, LOCKOUT_FAILURES, LOCKOUT_MS, type Permission, allows } from './accounts.ts';
export { type Clock, ManualClock, systemClock } from './clock.ts';
export { Engine, type EngineOptions, dataFiles } from './engine.ts';
export { type EscrowKeyRecord, escrowConfigOf, exportEscrow } from './escrow-export.ts';
export { type RestoreFromEscrowOptions, type RestoreFromEscrowResult, restoreFromEscrow } from './restore-from-escrow.ts';
export { JobRunner } from './job-runner.ts';
export { CronSpec, Scheduler, validateCron } from './scheduler.ts';
export type { JobKind, JobRecord, JobState, Role, ScheduleRecord } from './state-store.ts';
