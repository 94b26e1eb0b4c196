export { type RunResult, SqliteDb } from './sqlite-db.ts';
