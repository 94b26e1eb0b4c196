import fsp from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError, errorCode } from '../errors/index.ts';
import { writeFileAtomic } from '../storage/index.ts';

/** An update in flight, written before `current` is switched: an agent that dies mid-update finishes or rolls back on its next start. */
export interface UpdateInFlight {
  channel: string;
  from: string;
  to: string;
  phase: 'switched' | 'rolling-back';
  at: string;
}

export interface UpdateReportPending {
  channel: string;
  version: string;
  outcome: 'installed' | 'failed';
  detail: string;
}

/** The agent's own state (DATA_DIR/agent-state.json): settings the fleet may change, and update bookkeeping. */
export interface AgentState {
  channel: 'stable' | 'beta';
  /** When updates may be installed ("Sat-Sun 01:00-05:00; 22:00-06:00", local time), or null for any time. */
  maintenanceWindow: string | null;
  /** Overrides the fleet's interval when set. */
  heartbeatSeconds: number | null;
  /** Releases that failed their health check here: not installed again. */
  failedVersions: string[];
  update: UpdateInFlight | null;
  /** Update outcomes not yet acknowledged by the fleet. */
  reports: UpdateReportPending[];
  /** The escrow the fleet last confirmed (sha256 the engine gave). */
  escrowSha256: string | null;
}

export function defaultState(channel: 'stable' | 'beta'): AgentState {
  return { channel, maintenanceWindow: null, heartbeatSeconds: null, failedVersions: [], update: null, reports: [], escrowSha256: null };
}

export async function loadState(dataDir: string, channel: 'stable' | 'beta'): Promise<AgentState> {
  try {
    return { ...defaultState(channel), ...(JSON.parse(await fsp.readFile(path.join(dataDir, 'agent-state.json'), 'utf8')) as Partial<AgentState>) };
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return defaultState(channel);
    throw new HoldfastError('HF_IO', `cannot read ${path.join(dataDir, 'agent-state.json')}: ${(err as Error).message}; remove it to start from the defaults`, { cause: err });
  }
}

export async function saveState(dataDir: string, s: AgentState): Promise<void> {
  await writeFileAtomic(path.join(dataDir, 'agent-state.json'), `${JSON.stringify(s, null, 2)}\n`, { mode: 0o600, exclusive: false });
}
