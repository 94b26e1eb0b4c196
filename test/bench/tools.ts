// The three backup tools as the benchmark drives them: one fresh repository
// (and fresh caches) per session, and the commands for init, backup and
// restore.
import fs from 'node:fs';
import path from 'node:path';

import { V8_FLAGS } from '../../appliance/cli/runtime.mjs';
import { type Command, capture, removeTree, run } from './run.ts';

export const TOOLS = ['restic', 'borg', 'holdfast'] as const;
export type ToolName = (typeof TOOLS)[number];

export const ROOT = path.resolve(import.meta.dirname, '..', '..');
export const HOLDFAST_BIN = path.join(ROOT, 'appliance', 'cli', 'holdfast.mjs');
const PASSWORD = 'holdfast-bench-passphrase';

/** holdfast exactly as production starts it: node, the V8 flags, the bin. */
function holdfastCommand(args: string[], env: NodeJS.ProcessEnv): Command {
  return { file: process.execPath, args: [...V8_FLAGS, HOLDFAST_BIN, ...args], env };
}

export interface Session {
  tool: ToolName;
  repo: string;
  init: Command;
  /** Backs up one directory; n numbers the backups of this session (1, 2, …). */
  backup(source: string, n: number): Command;
  /** Restores the latest backup under target (absolute source paths end up below it). */
  restore(target: string): Command;
  /** Untimed preparation before the first timed command. */
  warmUp(): void;
}

/** A session in a fresh directory dir (removed first): repository, caches. */
export function openSession(tool: ToolName, dir: string): Session {
  removeTree(dir);
  fs.mkdirSync(dir, { recursive: true });
  const repo = path.join(dir, 'repo');
  if (tool === 'restic') return resticSession(dir, repo);
  if (tool === 'borg') return borgSession(dir, repo);
  return holdfastSession(dir, repo);
}

function resticSession(dir: string, repo: string): Session {
  const env = { ...process.env, RESTIC_PASSWORD: PASSWORD, RESTIC_CACHE_DIR: path.join(dir, 'cache') };
  return {
    tool: 'restic',
    repo,
    init: { file: 'restic', args: ['init', '--repo', repo], env },
    backup: (source) => ({ file: 'restic', args: ['backup', '--repo', repo, '-q', source], env }),
    restore: (target) => ({ file: 'restic', args: ['restore', 'latest', '--repo', repo, '--target', target, '-q'], env }),
    warmUp: () => {},
  };
}

function borgSession(dir: string, repo: string): Session {
  const env = { ...process.env, BORG_PASSPHRASE: PASSWORD, BORG_BASE_DIR: path.join(dir, 'base') };
  let last = 0;
  return {
    tool: 'borg',
    repo,
    init: { file: 'borg', args: ['init', '-e', 'repokey', repo], env },
    backup: (source, n) => {
      last = n;
      return { file: 'borg', args: ['create', '--compression', 'zstd,3', `${repo}::a${n}`, source], env };
    },
    // the archive of the last backup; borg extracts relative paths into the current directory
    restore: (target) => ({ file: 'borg', args: ['extract', `${repo}::a${last}`], env, cwd: target }),
    warmUp: () => {},
  };
}

function holdfastSession(dir: string, repo: string): Session {
  const env = { ...process.env, HOLDFAST_PASSWORD: PASSWORD, HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  return {
    tool: 'holdfast',
    repo,
    init: holdfastCommand(['init', '--repo', repo], env),
    // exit 3: done, but some files could not be read (reported as warnings)
    backup: (source) => ({ ...holdfastCommand(['backup', '--repo', repo, '--json', source], env), ok: [0, 3] }),
    restore: (target) => holdfastCommand(['restore', '--repo', repo, 'latest', '--target', target], env),
    // fills Node's compile cache (in the cache dir) as a production install would have it
    warmUp: () => { run(holdfastCommand(['--version'], env)); },
  };
}

/** Where a tool's restore puts the source directory under target. */
export function restoredPath(target: string, source: string): string {
  return path.join(target, path.relative('/', source));
}

export interface HoldfastBackupResult {
  snapshot: string;
  files: number;
  bytesRead: number;
  bytesAdded: number;
  seconds: number;
  [key: string]: unknown;
}

/** The JSON object on the last line of `holdfast backup --json`. */
export function parseHoldfastBackup(stdout: string): HoldfastBackupResult {
  const last = stdout.trimEnd().split('\n').pop() ?? '';
  const r = JSON.parse(last) as HoldfastBackupResult;
  for (const k of ['snapshot', 'files', 'bytesRead', 'bytesAdded', 'seconds'] as const) {
    if (r[k] === undefined) throw new Error(`holdfast backup --json printed no ${k}: ${last.slice(0, 500)}`);
  }
  return r;
}

/** Versions of the tools and of this machine, for the report header. */
export function toolVersions(work: string): Record<string, string> {
  const cache = path.join(work, 'facts-cache');
  const holdfast = capture(process.execPath, [...V8_FLAGS, HOLDFAST_BIN, '--version'], { ...process.env, HOLDFAST_CACHE_DIR: cache });
  removeTree(cache);
  return {
    restic: capture('restic', ['version']),
    borg: capture('borg', ['--version']),
    node: process.version,
    holdfast,
    openssl: capture('openssl', ['version']),
    tar: capture('tar', ['--version']).split('\n')[0] ?? '',
  };
}
