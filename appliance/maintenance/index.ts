export { type AffectedSnapshot, type CheckOptions, type CheckProblem, type CheckResult, check, packSlice } from './check.ts';
export { type ForgetOptions, type ForgetResult, forget } from './forget.ts';
export { type PruneOptions, type PruneResult, prune } from './prune.ts';
