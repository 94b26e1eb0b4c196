import { HoldfastError } from '../errors/index.ts';
import type { SnapshotEntry } from './snapshot.ts';

/**
 * A GFS retention policy. In each group (same host and paths) a snapshot is
 * kept when any rule keeps it: the newest `last`; the newest snapshot of each
 * of the newest `hourly` hours, `daily` days, `weekly` ISO weeks, `monthly`
 * months and `yearly` years that have one (local time); and every snapshot
 * carrying one of `tags` (protected). Everything else is forgotten.
 */
export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  tags?: string[];
}

export interface Decision {
  entry: SnapshotEntry;
  keep: boolean;
  reasons: string[];
}

const pad = (n: number) => String(n).padStart(2, '0');

/** ISO 8601 week of the local date: the week's Thursday decides the year. */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getFullYear(), d.getMonth(), d.getDate()));
  t.setUTCDate(t.getUTCDate() - ((t.getUTCDay() + 6) % 7) + 3);
  const dayOfYear = (t.getTime() - Date.UTC(t.getUTCFullYear(), 0, 1)) / 86_400_000;
  return `${t.getUTCFullYear()}-W${pad(1 + Math.floor(dayOfYear / 7))}`;
}

const BUCKETS: [keyof RetentionPolicy, (d: Date) => string][] = [
  ['hourly', (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}`],
  ['daily', (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`],
  ['weekly', isoWeek],
  ['monthly', (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}`],
  ['yearly', (d) => `${d.getFullYear()}`],
];

export function isEmptyPolicy(p: RetentionPolicy): boolean {
  return !p.last && !p.hourly && !p.daily && !p.weekly && !p.monthly && !p.yearly && !(p.tags && p.tags.length);
}

export function groupKey(e: SnapshotEntry): string {
  return `${e.snapshot.host}\0${[...e.snapshot.paths].sort().join('\0')}`;
}

/** Decides per snapshot. Refuses an empty policy (it would forget everything). */
export function applyPolicy(entries: readonly SnapshotEntry[], policy: RetentionPolicy): Decision[] {
  if (isEmptyPolicy(policy)) {
    throw new HoldfastError('HF_USAGE',
      'no retention rule given: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-tag');
  }
  const groups = new Map<string, SnapshotEntry[]>();
  for (const e of entries) {
    const k = groupKey(e);
    groups.set(k, [...(groups.get(k) ?? []), e]);
  }
  const out: Decision[] = [];
  for (const group of groups.values()) {
    const newestFirst = [...group].sort((a, b) => Date.parse(b.snapshot.time) - Date.parse(a.snapshot.time));
    const decisions = newestFirst.map((entry) => ({ entry, keep: false, reasons: [] as string[] }));
    decisions.forEach((d, i) => {
      if (policy.last && i < policy.last) d.reasons.push('last');
      if (policy.tags?.some((t) => d.entry.snapshot.tags.includes(t))) d.reasons.push('tag');
    });
    for (const [rule, bucketOf] of BUCKETS) {
      const n = policy[rule] as number | undefined;
      if (!n) continue;
      const seen = new Set<string>();
      for (const d of decisions) {
        if (seen.size >= n) break;
        const b = bucketOf(new Date(d.entry.snapshot.time));
        if (seen.has(b)) continue;
        seen.add(b);
        d.reasons.push(rule);
      }
    }
    for (const d of decisions) d.keep = d.reasons.length > 0;
    out.push(...decisions);
  }
  return out;
}
