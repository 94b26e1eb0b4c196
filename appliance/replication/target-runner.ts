import fsp from 'node:fs/promises';

import { errorCode } from '../errors/index.ts';
import { readPem } from '../pki/index.ts';
import type { Storage } from '../storage/index.ts';
import { RateLimiter, TokenBucket, parseRate, parseWindows, rateAt } from './rate-limit.ts';
import { type LocalFile, type ReplicateOptions, type ReplicationResult, fileKey, have, localFiles, replicate } from './replicator.ts';
import { type ClientTls, StoreConnection, endpointText } from './store-connection.ts';
import { TargetClient } from './target-client.ts';
import type { TargetConfig, TargetRegistry } from './targets.ts';

/** The TLS material a target names, read with clear errors. */
export async function targetTls(t: Pick<TargetConfig, 'ca' | 'cert' | 'key' | 'servername'>): Promise<ClientTls> {
  const [ca, cert, key] = await Promise.all([readPem(t.ca, 'CA certificate'), readPem(t.cert, 'certificate'), readPem(t.key, 'key')]);
  return { ca: Buffer.from(ca), cert: Buffer.from(cert), key: Buffer.from(key), ...(t.servername ? { servername: t.servername } : {}) };
}

export async function targetClient(t: TargetConfig, signal?: AbortSignal, onEvent?: TargetClientEvents): Promise<TargetClient> {
  return new TargetClient({ name: t.name, endpoints: t.endpoints, tls: await targetTls(t), spread: t.spread, ...(signal ? { signal } : {}), ...(onEvent ? { onEvent } : {}) });
}

type TargetClientEvents = (e: { event: 'connected' | 'failed'; endpoint: string; message?: string }) => void;

/** The bucket of one target: its rate, changed by its time windows. */
export function targetBucket(t: TargetConfig, now: () => Date = () => new Date()): TokenBucket | null {
  const base = t.rate === null ? Infinity : parseRate(t.rate);
  const windows = t.windows.flatMap((w) => parseWindows(w));
  if (base === Infinity && windows.length === 0) return null;
  return new TokenBucket({ rate: windows.length === 0 ? base : () => rateAt(base, windows, now()) });
}

export interface TargetRun {
  target: string;
  ok: boolean;
  result?: ReplicationResult;
  error?: { code: string; message: string };
}

/**
 * Replicates to each target at once, each with its own connection, queue,
 * progress and rate, all drawing also from one global bucket when
 * globalRate is set. A target that fails does not stop the others; its
 * state records the error, and the next run catches up.
 */
export async function replicateTargets(storage: Storage, registry: TargetRegistry, targets: TargetConfig[],
  options: { globalRate?: number; signal?: AbortSignal; concurrency?: number; deletes?: boolean;
    onProgress?: (target: string, p: Parameters<NonNullable<ReplicateOptions['onProgress']>>[0]) => void;
    onEvent?: (target: string, e: { event: string; endpoint: string; message?: string }) => void } = {}): Promise<TargetRun[]> {
  const global = options.globalRate !== undefined && options.globalRate !== Infinity ? new TokenBucket({ rate: options.globalRate }) : null;
  return Promise.all(targets.map(async (t): Promise<TargetRun> => {
    const state = await registry.state(t.name);
    state.lastAttempt = new Date().toISOString();
    let client: TargetClient | null = null;
    try {
      client = await targetClient(t, options.signal, (e) => options.onEvent?.(t.name, e));
      const bucket = targetBucket(t);
      const buckets = [bucket, global].filter((b): b is TokenBucket => b !== null);
      const base = t.rate === null ? Infinity : parseRate(t.rate);
      const windows = t.windows.flatMap((w) => parseWindows(w));
      const rates = () => Math.min(rateAt(base, windows, new Date()), options.globalRate ?? Infinity);
      const result = await replicate(storage, client, {
        ...(buckets.length ? { limiter: new RateLimiter(buckets), frameCap: () => Math.floor(rates() / 4) || 4096 } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.concurrency ? { concurrency: options.concurrency } : {}),
        ...(options.deletes !== undefined ? { deletes: options.deletes } : {}),
        onProgress: (p) => options.onProgress?.(t.name, p),
      });
      state.lastSuccess = new Date().toISOString();
      state.lastError = null;
      state.endpoint = result.endpoints.at(-1) ?? null;
      state.confirmed = result.confirmed;
      await registry.saveState(t.name, state);
      return { target: t.name, ok: true, result };
    } catch (err) {
      state.lastError = { code: errorCode(err) ?? 'HF_IO', message: (err as Error).message, at: new Date().toISOString() };
      await registry.saveState(t.name, state).catch(() => undefined);
      return { target: t.name, ok: false, error: state.lastError };
    } finally {
      client?.close();
    }
  }));
}

export interface TargetStatus {
  target: string;
  endpoints: { endpoint: string; reachable: boolean; rttMs?: number; error?: string }[];
  reachable: string | null;
  /** Bytes of the repository the store lacks (from the store when reachable, else from the last run's record). */
  pendingBytes: number;
  pendingFiles: number;
  /** Whether pending figures come from asking the store now. */
  live: boolean;
  lastSuccess: string | null;
  lastAttempt: string | null;
  lastError: { code: string; message: string; at: string } | null;
  /** Seconds since the oldest snapshot the store lacks was written; 0 when up to date. */
  lagSeconds: number;
  snapshotsPending: number;
}

/**
 * Asks each endpoint (PING) and the first reachable one what it lacks
 * (HAVE). With probe false it connects to nothing and answers from the
 * last run's record (for a dashboard that refreshes often).
 */
export async function targetStatus(storage: Storage & { location: string }, registry: TargetRegistry, t: TargetConfig,
  options: { probe?: boolean; files?: readonly LocalFile[] } = {}): Promise<TargetStatus> {
  const state = await registry.state(t.name);
  // the repository's files: listed once by a caller asking about several targets
  const files = options.files ?? await localFiles(storage);
  const endpoints: TargetStatus['endpoints'] = [];
  let missing: Set<string> | null = null;
  let reachable: string | null = null;
  const tls = options.probe === false ? null : await targetTls(t);
  for (const ep of tls ? t.endpoints : []) {
    try {
      const c = await StoreConnection.connect(ep, tls!);
      try {
        const rtt = await c.ping();
        endpoints.push({ endpoint: endpointText(ep), reachable: true, rttMs: Math.round(rtt * 10) / 10 });
        if (missing === null) {
          reachable = endpointText(ep);
          const states = await have(c, files);
          missing = new Set(files.filter((_, i) => states[i]!.state !== 'complete').map(fileKey));
        }
      } finally {
        c.close();
      }
    } catch (err) {
      endpoints.push({ endpoint: endpointText(ep), reachable: false, error: `${errorCode(err) ?? 'error'}: ${(err as Error).message}` });
    }
  }
  const live = missing !== null;
  const confirmed = new Set(state.confirmed);
  const lacking = files.filter((f) => (missing ? missing.has(fileKey(f)) : !confirmed.has(fileKey(f))));
  let oldest = Infinity;
  let snapshotsPending = 0;
  for (const f of lacking) {
    if (f.type !== 'snapshot') continue;
    snapshotsPending++;
    const st = await fsp.stat(`${storage.location}/snapshots/${f.name}`).catch(() => null);
    if (st) oldest = Math.min(oldest, st.mtimeMs);
  }
  return {
    target: t.name, endpoints, reachable, live,
    pendingBytes: lacking.reduce((s, f) => s + f.size, 0), pendingFiles: lacking.length,
    lastSuccess: state.lastSuccess, lastAttempt: state.lastAttempt, lastError: state.lastError,
    lagSeconds: oldest === Infinity ? 0 : Math.max(0, Math.round((Date.now() - oldest) / 1000)), snapshotsPending,
  };
}
