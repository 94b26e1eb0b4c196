// Consecutive releases of one npm package backed up one after another into
// one repository per tool: what the repository holds at the end.
import path from 'node:path';

import { type PackageVersion, prepareVersions, treeStats } from './data.ts';
import { emit, heading, mib, note, passMark, ratio, round, say, secs, table } from './report.ts';
import { duBytes, removeTree, run, timed, warmPageCache } from './run.ts';
import { type ToolName, TOOLS, openSession, parseHoldfastBackup } from './tools.ts';

const PACKAGE = 'typescript';
/** Twelve consecutive stable releases (the registry's order), oldest first. */
const VERSIONS = ['5.4.5', '5.5.2', '5.5.3', '5.5.4', '5.6.2', '5.6.3', '5.7.2', '5.7.3', '5.8.2', '5.8.3', '5.9.2', '5.9.3'] as const;

interface ToolResult {
  tool: ToolName;
  seconds: number;
  maxRssKib: number;
  /** Repository bytes after each version. */
  sizes: number[];
}

function measureTool(tool: ToolName, work: string, versions: PackageVersion[]): ToolResult {
  const dir = path.join(work, 'versions-repos', tool);
  const s = openSession(tool, dir);
  s.warmUp();
  run(s.init);
  const r: ToolResult = { tool, seconds: 0, maxRssKib: 0, sizes: [] };
  for (const [i, v] of versions.entries()) {
    warmPageCache(v.dir, s.repo);
    const t = timed(s.backup(v.dir, i + 1));
    const extra = tool === 'holdfast' ? { bytes_added: parseHoldfastBackup(t.stdout).bytesAdded, exit: t.status } : {};
    const size = duBytes(s.repo);
    r.seconds += t.seconds;
    r.maxRssKib = Math.max(r.maxRssKib, t.rssKib);
    r.sizes.push(size);
    emit({ bench: 'versions', tool, op: 'backup', version: v.version, seconds: t.seconds, rss_kib: t.rssKib, repo_bytes: size, ...extra });
  }
  note(`versions: ${tool}: ${secs(r.seconds)}, ${mib(r.sizes.at(-1)!)}`);
  if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dir);
  return r;
}

export interface VersionsSummary {
  package: string;
  versions: string[];
  source_bytes: number;
  repo_bytes: Record<string, number>;
  seconds: Record<string, number>;
  size_vs_restic: number;
  size_vs_borg: number;
  pass: { repo_size: boolean };
}

export function benchVersions(work: string): VersionsSummary {
  heading(`versions: ${VERSIONS.length} releases of ${PACKAGE}`);
  const versions = prepareVersions(work, PACKAGE, VERSIONS);
  let sourceBytes = 0;
  for (const v of versions) {
    const st = treeStats(v.dir);
    sourceBytes += st.bytes;
    emit({ bench: 'versions', op: 'data', version: v.version, files: st.files, bytes: st.bytes });
  }
  say(`data: ${PACKAGE} ${VERSIONS[0]} … ${VERSIONS.at(-1)}: ${sourceBytes} bytes (${mib(sourceBytes)}) in all, each version backed up as its own run`);

  const results = TOOLS.map((tool) => measureTool(tool, work, versions));
  say('');
  table(['version', ...TOOLS.map((t) => `${t} repo`)], versions.map((v, i) => [v.version, ...results.map((r) => mib(r.sizes[i]!))]));
  say('');
  table(['tool', 'total time', 'max peak RSS', 'repo size', 'of source'], results.map((r) => [
    r.tool, secs(r.seconds), mib(r.maxRssKib * 1024), mib(r.sizes.at(-1)!), `${((100 * r.sizes.at(-1)!) / sourceBytes).toFixed(1)}%`,
  ]));

  const final = Object.fromEntries(results.map((r) => [r.tool, r.sizes.at(-1)!])) as Record<ToolName, number>;
  const seconds = Object.fromEntries(results.map((r) => [r.tool, round(r.seconds, 2)]));
  const vsRestic = final.holdfast / final.restic;
  const vsBorg = final.holdfast / final.borg;
  const pass = { repo_size: vsRestic <= 1 };
  say('');
  table(['holdfast vs restic', 'ratio', 'target', 'result', 'vs borg'], [
    ['repo_size', ratio(vsRestic), '<= 1', passMark(pass.repo_size), ratio(vsBorg)],
  ]);
  const summary: VersionsSummary = {
    package: PACKAGE,
    versions: [...VERSIONS],
    source_bytes: sourceBytes,
    repo_bytes: final,
    seconds,
    size_vs_restic: round(vsRestic, 3),
    size_vs_borg: round(vsBorg, 3),
    pass,
  };
  emit({ bench: 'versions', op: 'ratios', ...summary });
  return summary;
}
