// Running external commands for the benchmark: plain runs that must succeed,
// and timed runs wrapped in GNU time for wall seconds and peak RSS.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Test } from 'tap';

/** A failure that makes the benchmark meaningless: the run exits non-zero. */
export class BenchError extends Error {
  override readonly name = 'BenchError';
}

export interface Command {
  file: string;
  args: string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Exit statuses that count as success (default: only 0). */
  ok?: number[];
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export interface TimedResult extends RunResult {
  /** Wall-clock seconds (GNU time %e). */
  seconds: number;
  /** Peak resident set size in KiB (GNU time %M). */
  rssKib: number;
}

export const GNU_TIME = '/usr/bin/time';

/** The helpers want a tap Test only for teardown; the benchmark runs those at its end. */
export function teardownScope(): { t: Test; close(): Promise<void> } {
  const fns: (() => unknown)[] = [];
  const t = { teardown: (fn: () => unknown) => { fns.push(fn); } } as unknown as Test;
  return { t, close: async () => { for (const fn of fns.reverse()) await fn(); } };
}


function describe(c: Command): string {
  return [c.file, ...c.args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a}'`)).join(' ');
}

function tail(s: string, lines = 20): string {
  return s.trimEnd().split('\n').slice(-lines).join('\n');
}

function spawnChecked(c: Command, file: string, args: string[]): RunResult {
  const r = spawnSync(file, args, {
    cwd: c.cwd,
    env: c.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 256 << 20,
    encoding: 'utf8',
  });
  if (r.error) throw new BenchError(`cannot run \`${describe(c)}\`: ${r.error.message}`);
  const status = r.status ?? 128;
  const ok = c.ok ?? [0];
  if (!ok.includes(status)) {
    const why = r.signal ? `killed by ${r.signal}` : `exit status ${status}`;
    throw new BenchError(`\`${describe(c)}\` failed (${why})\n${tail(r.stderr || r.stdout)}`);
  }
  return { status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command to completion; throws unless its exit status is accepted. */
export function run(c: Command): RunResult {
  return spawnChecked(c, c.file, c.args);
}

/** Output of a short command, trimmed ('' when it cannot run). */
export function capture(file: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(file, args, { encoding: 'utf8', env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  return r.error ? '' : `${r.stdout}${r.stderr}`.trim();
}

/** Flushes dirty pages so one timed command does not pay for the previous one's writes. */
export function sync(): void {
  run({ file: 'sync', args: [] });
}

/**
 * Runs a command under GNU time after a sync; returns its wall seconds and
 * peak RSS (of the largest process it waited for).
 */
export function timed(c: Command): TimedResult {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hf-bench-time-'));
  const out = path.join(dir, 'time');
  try {
    sync();
    const r = spawnChecked(c, GNU_TIME, ['-f', '%e %M', '-o', out, c.file, ...c.args]);
    const last = fs.readFileSync(out, 'utf8').trim().split('\n').pop() ?? '';
    const m = /^(\d+(?:\.\d+)?) (\d+)$/.exec(last);
    if (!m) throw new BenchError(`cannot parse GNU time output ${JSON.stringify(last)} of \`${describe(c)}\``);
    return { ...r, seconds: Number(m[1]), rssKib: Number(m[2]) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Bytes under a directory as `du -sb` counts them. */
export function duBytes(dir: string): number {
  const r = run({ file: 'du', args: ['-sb', dir] });
  const n = Number(r.stdout.split('\t')[0]);
  if (!Number.isFinite(n)) throw new BenchError(`cannot parse du output for ${dir}: ${r.stdout}`);
  return n;
}

/**
 * Reads every file under each dir once, so that the next reader finds it in
 * the page cache. Called right before each timed command that reads data or
 * a repository: a machine may page out what was not touched for a while
 * (this VM's DAMON reclaim pages out memory idle for 60 s), which would
 * otherwise time the disk for whichever tool happens to run later.
 */
export function warmPageCache(...dirs: string[]): void {
  // Not `tar cf /dev/null`: GNU tar notices /dev/null and skips reading file contents.
  for (const dir of dirs) run({ file: 'bash', args: ['-o', 'pipefail', '-c', 'tar -C "$1" -cf - . | cat >/dev/null', 'warm', dir] });
}

/** Removes a directory tree if present. */
export function removeTree(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

/** A restore target: a fresh tmpfs when mounting works, else a fresh directory. */
export interface Target {
  path: string;
  tmpfs: boolean;
  /** Why no tmpfs could be used (when tmpfs is false). */
  note?: string;
}

export function mountTarget(p: string): Target {
  releaseStaleMount(p);
  fs.mkdirSync(p, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=6g', 'tmpfs', p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status === 0) return { path: p, tmpfs: true };
  return { path: p, tmpfs: false, note: `tmpfs mount failed (${(r.stderr || r.error?.message || '').trim()}); restored to a fresh directory on ${p}` };
}

export function unmountTarget(t: Target): void {
  if (t.tmpfs) run({ file: 'umount', args: [t.path] });
  removeTree(t.path);
}

/** Unmounts and removes a restore target left behind by an interrupted run. */
export function releaseStaleMount(p: string): void {
  if (spawnSync('mountpoint', ['-q', p]).status === 0) run({ file: 'umount', args: [p] });
  removeTree(p);
}
