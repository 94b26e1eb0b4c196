import { createHash } from 'node:crypto';

import { RELEASE_VERSION, compareVersions } from '../tuf/index.ts';
import type { BoxName, ReleaseRecord, UpdateReport } from './fleet-store.ts';

/** A release version (MAJOR.MINOR.PATCH[-pre]), as the TUF repository names targets. */
export const VERSION = RELEASE_VERSION;
export { CHANNELS, type Channel } from '../tuf/index.ts';

/** Defaults of a staged rollout: the first stage, and the failure rate that halts it. */
export const FIRST_STAGE_PERCENT = 10;
export const HALT_FAILURE_RATE = 0.2;

export { compareVersions };

/**
 * Where a box falls in a release's rollout, in [0, 100): from a hash of the
 * box's name and the release, so the same box is not always first, and the
 * same box always gets the same answer for one release (a stage only grows).
 */
export function rolloutBucket(box: BoxName, channel: string, version: string): number {
  const h = createHash('sha256').update(`${channel}\0${version}\0${box}`).digest();
  return (h.readUInt32BE(0) / 0x1_0000_0000) * 100;
}

/** The release a box on `channel` at `current` should move to now, or null. */
export function releaseFor(box: BoxName, channel: string, current: string | null, releases: readonly ReleaseRecord[]): ReleaseRecord | null {
  let best: ReleaseRecord | null = null;
  for (const r of releases) {
    if (r.channel !== channel || r.halted !== null) continue;
    if (current !== null && compareVersions(r.version, current) <= 0) continue;
    if (rolloutBucket(box, r.channel, r.version) >= r.percent) continue;
    if (best === null || compareVersions(r.version, best.version) > 0) best = r;
  }
  return best;
}

/**
 * Whether the reports of a release's current stage call for a halt: more
 * than `threshold` of the boxes that reported failed (at least one did).
 * The first failures halt a small stage at once: that is the point of it.
 */
export function haltReason(reports: readonly UpdateReport[], threshold = HALT_FAILURE_RATE): string | null {
  const failed = reports.filter((r) => r.outcome === 'failed');
  if (failed.length === 0) return null;
  const rate = failed.length / reports.length;
  if (rate <= threshold) return null;
  return `${failed.length} of ${reports.length} boxes that installed it failed (${(rate * 100).toFixed(0)}% > ${(threshold * 100).toFixed(0)}%): ` +
    failed.slice(0, 3).map((r) => `${r.box}: ${r.detail}`).join('; ');
}
