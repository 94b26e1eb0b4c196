import { X509Certificate } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';

import { PROGRAM } from '../backup/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { type EscrowConfig, type EscrowTarget, EscrowKeyPair, escrowDigest, escrowKeyId, escrowMac, sealEscrow } from '../escrow/index.ts';
import type { EngineServices } from './services.ts';
import type { StateStore } from './state-store.ts';

/** The sealed meta value holding the escrow public key (never the private key, never the recovery key). */
const ESCROW_KEY = 'escrow-key';

export interface EscrowKeyRecord {
  /** Raw X25519 public key, base64. */
  publicKey: string;
  keyId: string;
  /** When it was set, and how: derived when the engine made the repository, given by an admin, or by a restore. */
  set: string;
  by: 'init' | 'admin' | 'restore';
}

/**
 * Keeps the escrow public key in the state, sealed (so that a changed
 * database cannot make the box seal for someone else's key).
 */
export async function saveEscrowKey(state: StateStore, publicKey: Buffer, by: EscrowKeyRecord['by'], now: string): Promise<EscrowKeyRecord> {
  const r: EscrowKeyRecord = { publicKey: publicKey.toString('base64'), keyId: escrowKeyId(publicKey), set: now, by };
  await state.setSealed(ESCROW_KEY, r);
  return r;
}

export function escrowKeyOf(state: StateStore): Promise<EscrowKeyRecord | null> {
  return state.getSealed<EscrowKeyRecord>(ESCROW_KEY);
}

/**
 * An engine made before escrow existed, not yet set up, still holds its
 * recovery key: the escrow key is derived from it at start.
 */
export async function adoptEscrowKey(state: StateStore, now: string): Promise<void> {
  if (await escrowKeyOf(state)) return;
  const recovery = await state.getSealed<{ key: string }>('recovery-key');
  if (recovery) await saveEscrowKey(state, EscrowKeyPair.fromRecoveryKey(recovery.key).publicKey, 'init', now);
}

/** The CN of a certificate (PEM text): an appliance certificate's CN is its tenant name. Null when unreadable. */
export function certificateName(pem: string): string | null {
  try {
    const cn = new X509Certificate(pem).subject.split('\n').find((l) => l.startsWith('CN='));
    return cn ? cn.slice(3) : null;
  } catch {
    return null;
  }
}

/**
 * The engine's configuration as an escrow holds it (docs/DESIGN.md,
 * "Configuration escrow"), with its MAC under the repository's key.
 */
export async function escrowConfigOf(engine: EngineServices): Promise<EscrowConfig> {
  const { state } = engine;
  const creds = await engine.repoCredentials();
  const sources = [];
  for (const s of await state.sources()) sources.push({ name: s.name, spec: s.spec, secret: await state.sourceSecret(s.name) });
  const targets: EscrowTarget[] = [];
  for (const t of await engine.targets.list()) {
    const read = (file: string) => fsp.readFile(file, 'utf8').catch(() => null);
    const cert = await read(t.cert);
    targets.push({
      name: t.name, endpoints: t.endpoints.map((e) => ({ host: e.host, port: e.port })), ca: await read(t.ca),
      tenant: cert === null ? null : certificateName(cert), servername: t.servername ?? null, rate: t.rate, windows: t.windows, spread: t.spread,
    });
  }
  const config: Omit<EscrowConfig, 'mac'> = {
    version: 1,
    box: { hostname: os.hostname(), name: targets.find((t) => t.tenant !== null)?.tenant ?? null, program: PROGRAM },
    repository: { id: engine.repo.id, password: creds.password },
    sources,
    schedules: (await state.schedules()).flatMap((s) => (s.job === 'restore' ? [] : [{ job: s.job, subject: s.subject, cron: s.cron, enabled: s.enabled }])),
    retention: await state.retention(),
    protected: await state.protectedSnapshots(),
    users: (await state.users()).map((u) => ({ name: u.name, role: u.role, password: u.password, created: u.created })),
    targets,
  };
  return { ...config, mac: escrowMac(config, engine.repo.authKey('config escrow mac')) };
}

/**
 * The current configuration sealed for the escrow key, with its change
 * token (escrowDigest). HF_ESCROW_NOT_FOUND when the engine has no escrow key.
 */
export async function exportEscrow(engine: EngineServices): Promise<{ blob: Buffer; digest: string; keyId: string }> {
  const key = await escrowKeyOf(engine.state);
  if (!key) {
    throw new HoldfastError('HF_ESCROW_NOT_FOUND',
      'this box has no escrow key (its repository was adopted with --repo, or was set up before escrow existed), so it cannot seal its configuration: ' +
      'give the repository\'s recovery key once, on the box: `holdfast escrow set-key --recovery-key-file FILE` (or PUT /v1/escrow/key { recoveryKey } as an admin)');
  }
  const config = await escrowConfigOf(engine);
  return { blob: sealEscrow(Buffer.from(key.publicKey, 'base64'), config), digest: escrowDigest(config), keyId: key.keyId };
}
