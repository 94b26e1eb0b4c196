// A tree of real files (>= 1.1 GB from /usr): first backup, no-change backup,
// restore, repository size and peak RSS, for restic, borg and holdfast.
import path from 'node:path';

import { prepareTree, treeStats } from './data.ts';
import { emit, heading, mib, note, passMark, ratio, round, say, secs, table } from './report.ts';
import { type TimedResult, BenchError, duBytes, mountTarget, releaseStaleMount, removeTree, run, timed, unmountTarget, warmPageCache } from './run.ts';
import { type ToolName, TOOLS, openSession, parseHoldfastBackup, restoredPath } from './tools.ts';
import { verifyRestore } from './verify.ts';

const OPS = ['first_backup', 'nochange_backup', 'restore'] as const;
type Op = (typeof OPS)[number];

interface ToolResult {
  tool: ToolName;
  ops: Record<Op, TimedResult>;
  repoBytes: number;
}

/** A target on one holdfast/restic ratio. */
interface Goal {
  name: string;
  value: number;
  /** 'min': value must be at least target; 'max': at most. */
  kind: 'min' | 'max';
  target: number;
}

function emitOp(tool: ToolName, op: Op, r: TimedResult, bytes: number, extra: Record<string, unknown> = {}): void {
  emit({ bench: 'tree', tool, op, seconds: r.seconds, rss_kib: r.rssKib, mb_per_s: round(bytes / r.seconds / 1e6, 1), ...extra });
}

function holdfastExtra(tool: ToolName, op: Op, r: TimedResult): Record<string, unknown> {
  if (tool !== 'holdfast' || op === 'restore') return {};
  const j = parseHoldfastBackup(r.stdout);
  if (r.status === 3) note(`holdfast ${op}: exit 3, some files could not be read:\n${r.stderr.trim().split('\n').slice(0, 10).join('\n')}`);
  return { exit: r.status, files: j.files, bytes_read: j.bytesRead, bytes_added: j.bytesAdded, holdfast_seconds: j.seconds };
}

function measureTool(tool: ToolName, work: string, data: string, bytes: number): ToolResult {
  const dir = path.join(work, 'tree', tool);
  releaseStaleMount(path.join(dir, 'restore'));
  const s = openSession(tool, dir);
  s.warmUp();
  run(s.init);
  const ops = {} as Record<Op, TimedResult>;
  for (const [i, op] of (['first_backup', 'nochange_backup'] as const).entries()) {
    note(`tree: ${tool} ${op}`);
    warmPageCache(data, s.repo);
    ops[op] = timed(s.backup(data, i + 1));
    emitOp(tool, op, ops[op], bytes, holdfastExtra(tool, op, ops[op]));
  }

  const target = mountTarget(path.join(dir, 'restore'));
  if (!target.tmpfs) say(`NOTE: ${tool}: ${target.note}`);
  try {
    note(`tree: ${tool} restore`);
    warmPageCache(s.repo);
    ops.restore = timed(s.restore(target.path));
    emitOp(tool, 'restore', ops.restore, bytes, { tmpfs: target.tmpfs });
    if (tool === 'holdfast') {
      note('tree: verifying the holdfast restore');
      const v = verifyRestore(data, restoredPath(target.path, data));
      say(`holdfast restore verified: ${v.entries} entries equal to the source (metadata and bytes)`);
    }
  } finally {
    unmountTarget(target);
  }
  const repoBytes = duBytes(s.repo);
  emit({ bench: 'tree', tool, op: 'repo_size', bytes: repoBytes });
  if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dir);
  return { tool, ops, repoBytes };
}

function middle(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
}

/** Per operation: the median time and the median peak RSS over the rounds. */
function median(rounds: ToolResult[]): ToolResult {
  const first = rounds[0]!;
  const ops = {} as Record<Op, TimedResult>;
  for (const op of OPS) {
    ops[op] = {
      ...first.ops[op],
      seconds: round(middle(rounds.map((r) => r.ops[op].seconds)), 2),
      rssKib: Math.round(middle(rounds.map((r) => r.ops[op].rssKib))),
    };
  }
  return { tool: first.tool, ops, repoBytes: Math.round(middle(rounds.map((r) => r.repoBytes))) };
}

function resultsTable(results: ToolResult[], bytes: number): void {
  const rows = results.map((r) => [
    r.tool,
    secs(r.ops.first_backup.seconds), `${(bytes / r.ops.first_backup.seconds / 1e6).toFixed(0)} MB/s`, mib(r.ops.first_backup.rssKib * 1024),
    secs(r.ops.nochange_backup.seconds), mib(r.ops.nochange_backup.rssKib * 1024),
    secs(r.ops.restore.seconds), mib(r.ops.restore.rssKib * 1024),
    mib(r.repoBytes),
  ]);
  table(['tool', 'first backup', 'throughput', 'peak RSS', 'no-change', 'peak RSS', 'restore', 'peak RSS', 'repo size'], rows);
}

/** Holdfast against another tool: speed ratios (>1 = holdfast faster) and size/RSS ratios (<1 = holdfast smaller). */
function ratios(hf: ToolResult, other: ToolResult): Record<string, number> {
  const r: Record<string, number> = {
    first_backup_speed: other.ops.first_backup.seconds / hf.ops.first_backup.seconds,
    nochange_speed: other.ops.nochange_backup.seconds / hf.ops.nochange_backup.seconds,
    restore_speed: other.ops.restore.seconds / hf.ops.restore.seconds,
    repo_size: hf.repoBytes / other.repoBytes,
  };
  for (const op of OPS) r[`rss_${op}`] = hf.ops[op].rssKib / other.ops[op].rssKib;
  for (const k of Object.keys(r)) r[k] = round(r[k]!, 3);
  return r;
}

function goals(vsRestic: Record<string, number>): Goal[] {
  const t = (name: string, kind: 'min' | 'max', target: number): Goal => ({ name, value: vsRestic[name]!, kind, target });
  return [
    t('first_backup_speed', 'min', 1.5),
    t('nochange_speed', 'min', 2),
    t('restore_speed', 'min', 1),
    t('repo_size', 'max', 1),
    ...OPS.map((op) => t(`rss_${op}`, 'max', 1)),
  ];
}

function passes(t: Goal): boolean {
  return t.kind === 'min' ? t.value >= t.target : t.value <= t.target;
}

export interface TreeSummary {
  files: number;
  bytes: number;
  vs_restic: Record<string, number>;
  vs_borg: Record<string, number>;
  pass: Record<string, boolean>;
}

export function benchTree(work: string): TreeSummary {
  heading('tree: real files from /usr');
  const { root: data, prepared } = prepareTree(work);
  const stats = treeStats(data);
  say(`data: ${data} (${prepared ? 'prepared now' : 'reused'}): ${stats.files} files, ${stats.dirs} directories, ` +
    `${stats.symlinks} symlinks, ${stats.bytes} bytes (${mib(stats.bytes)}) in regular files`);
  emit({ bench: 'tree', op: 'data', path: data, ...stats, prepared });
  if (stats.bytes < 1e9) throw new BenchError(`the tree data holds only ${stats.bytes} bytes; remove ${work} to prepare it again`);

  // Timings on a shared 2-core VM vary from run to run: every tool is measured
  // ROUNDS times, the tools taking turns, and the medians are compared.
  const rounds = Math.max(1, Number(process.env.HOLDFAST_BENCH_ROUNDS ?? 3));
  const all = new Map<ToolName, ToolResult[]>(TOOLS.map((t) => [t, []]));
  for (let r = 1; r <= rounds; r++) {
    note(`tree: round ${r} of ${rounds}`);
    for (const tool of TOOLS) all.get(tool)!.push(measureTool(tool, work, data, stats.bytes));
  }
  const results = new Map<ToolName, ToolResult>(TOOLS.map((t) => [t, median(all.get(t)!)]));
  say(`(medians of ${rounds} rounds; each round measured every tool, in turn)`);
  const hf = results.get('holdfast')!;
  const restic = results.get('restic')!;
  const borg = results.get('borg')!;

  say('');
  resultsTable([...results.values()], stats.bytes);
  const vsRestic = ratios(hf, restic);
  const vsBorg = ratios(hf, borg);
  say('');
  const list = goals(vsRestic);
  table(['holdfast vs restic', 'ratio', 'target', 'result', 'vs borg'], list.map((t) => [
    t.name, ratio(t.value), `${t.kind === 'min' ? '>=' : '<='} ${t.target}`, passMark(passes(t)), ratio(vsBorg[t.name]!),
  ]));
  say('(speed ratios: other tool seconds / holdfast seconds; size and RSS: holdfast / other tool)');
  const pass = Object.fromEntries(list.map((t) => [t.name, passes(t)]));
  emit({ bench: 'tree', op: 'ratios', vs_restic: vsRestic, vs_borg: vsBorg, pass });
  return { files: stats.files, bytes: stats.bytes, vs_restic: vsRestic, vs_borg: vsBorg, pass };
}
