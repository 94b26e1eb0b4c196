import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

import { HoldfastError, errorCode } from '../errors/index.ts';
import { type EscrowConfig, type EscrowTarget, EscrowKeyPair, hasValidEscrowMac, openEscrow } from '../escrow/index.ts';
import { readPem } from '../pki/index.ts';
import { type ClientTls, RemoteStorage, type TargetConfig, TargetClient, TargetRegistry, cloneRepository, endpointText } from '../replication/index.ts';
import { Repository } from '../repository/index.ts';
import { listSnapshots } from '../snapshot/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { dataFiles } from './engine.ts';
import { certificateName, saveEscrowKey } from './escrow-export.ts';
import { ApplianceKey } from './secrets.ts';
import { StateStore } from './state-store.ts';

export interface RestoreFromEscrowOptions {
  /** The replacement box's data directory: new, or one no configured engine uses. */
  dataDir: string;
  /** The sealed escrow, as GET /v1/escrow gave it to the fleet. */
  escrow: Buffer;
  /** The recovery key printed at the old box's setup. */
  recoveryKey: string;
  /**
   * PEM files: the replacement box's fleet-issued certificate (same name as
   * the old box's, so the same tenant at the stores), its key, and the
   * vendor CA that issued it.
   */
  identity: { cert: string; key: string; ca: string };
  signal?: AbortSignal;
  onProgress?: (msg: string) => void;
}

export interface RestoreFromEscrowResult {
  sources: number;
  schedules: number;
  targets: number;
  snapshots: number;
  users: number;
  /** The target the repository was cloned from. */
  clonedFrom: string;
  /** The tenant (the certificate's name). */
  tenant: string;
  repository: string;
  /** Files fetched from the target, and bytes. */
  files: number;
  bytes: number;
}

/** Directories of a repository's layout (LocalStorage.initialize): an interrupted clone leaves only these. */
const LAYOUT = new Set(['keys', 'data', 'index', 'snapshots', 'locks', 'tmp', 'config', 'replication']);

/** The certificate, key and CA files checked against each other; the tenant is the certificate's name. */
async function readIdentity(identity: RestoreFromEscrowOptions['identity']): Promise<{ cert: string; key: string; ca: string; tenant: string }> {
  const [cert, key, ca] = await Promise.all([readPem(identity.cert, 'certificate'), readPem(identity.key, 'key'), readPem(identity.ca, 'CA certificate')]);
  let x: X509Certificate;
  let caCert: X509Certificate;
  try {
    x = new X509Certificate(cert);
    caCert = new X509Certificate(ca);
  } catch (cause) {
    throw new HoldfastError('HF_PKI_INVALID', `${identity.cert} or ${identity.ca} is not a certificate: ${(cause as Error).message}`, { cause });
  }
  if (!x.checkIssued(caCert) || !x.verify(caCert.publicKey)) {
    throw new HoldfastError('HF_PKI_INVALID', `certificate ${identity.cert} was not issued by the CA ${identity.ca}`);
  }
  let matches = false;
  try {
    matches = x.checkPrivateKey(createPrivateKey(key));
  } catch (cause) {
    throw new HoldfastError('HF_PKI_INVALID', `${identity.key} is not a private key: ${(cause as Error).message}`, { cause });
  }
  if (!matches) throw new HoldfastError('HF_PKI_INVALID', `key ${identity.key} does not belong to certificate ${identity.cert}`);
  if (Date.parse(x.validTo) < Date.now()) throw new HoldfastError('HF_PKI_INVALID', `certificate ${identity.cert} expired on ${x.validTo}`);
  const tenant = certificateName(cert);
  if (!tenant) throw new HoldfastError('HF_PKI_INVALID', `certificate ${identity.cert} has no name (CN)`);
  return { cert, key, ca, tenant };
}

/** Whether an engine answers on the data directory's socket. */
function engineRunning(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/**
 * Makes sure DATA_DIR/repository can receive the clone: missing or empty
 * (initialised here), an earlier clone of the same repository (resumed), or
 * an empty repository a fresh engine made before the restore (moved aside).
 * Anything else is HF_CONFLICT.
 */
async function prepareRepositoryDir(dir: string, repoId: string, progress: (m: string) => void): Promise<LocalStorage> {
  const dest = new LocalStorage(dir);
  const entries = await fsp.readdir(dir).catch((err: unknown) => { if (errorCode(err) === 'ENOENT') return null; throw err; });
  if (entries === null || entries.length === 0) {
    await dest.initialize();
    return dest;
  }
  if (!entries.every((e) => LAYOUT.has(e))) {
    throw new HoldfastError('HF_CONFLICT', `${dir} holds other files than a repository's; move it away and run the restore again`);
  }
  const ids = new Set<string>();
  for (const f of await fsp.readdir(path.join(dir, 'keys')).catch(() => [] as string[])) {
    try {
      ids.add(String((JSON.parse(await fsp.readFile(path.join(dir, 'keys', f), 'utf8')) as { repository?: unknown }).repository));
    } catch {
      ids.add('?');
    }
  }
  if (ids.size === 0 || (ids.size === 1 && ids.has(repoId))) {
    if (ids.size > 0) progress(`${dir} holds an earlier, interrupted clone of this repository: resuming it`);
    for (const d of ['keys', 'data', 'index', 'snapshots', 'locks', 'tmp']) await fsp.mkdir(path.join(dir, d), { recursive: true });
    return dest;
  }
  const snapshots = await fsp.readdir(path.join(dir, 'snapshots')).catch(() => [] as string[]);
  if (snapshots.length > 0) {
    throw new HoldfastError('HF_CONFLICT',
      `${dir} holds another repository (${[...ids].join(', ').slice(0, 80)}) with ${snapshots.length} snapshot(s): restore into a new data directory, or move that repository away`);
  }
  const aside = `${dir}.before-restore-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  await fsp.rename(dir, aside);
  progress(`${dir} held an empty repository (made by an engine started before the restore): moved to ${aside}`);
  await dest.initialize();
  return dest;
}

/**
 * Opens the target's copy with the recovery key before anything is
 * downloaded (a wrong certificate, tenant or repository is found here), and
 * checks two things a vendor that runs both the fleet and the store could
 * not fake: the repository is the customer's (only a holder of the recovery
 * key could write the recovery key file that opens it), and the escrow's
 * configuration was made by a holder of that repository's master key (its
 * MAC). The second failing is fatal (HF_REPO_CORRUPT), not a reason to try
 * the next target.
 */
async function openRemote(t: EscrowTarget, tls: ClientTls, config: EscrowConfig, recoveryKey: string, signal?: AbortSignal): Promise<void> {
  const remote = new RemoteStorage(new TargetClient({ name: t.name, endpoints: t.endpoints, tls, rounds: 2, backoffMs: 500, ...(signal ? { signal } : {}) }), `target ${t.name}`);
  try {
    if ((await remote.list('config')).length === 0) {
      throw new HoldfastError('HF_STORE_TENANT_NOT_FOUND', `target ${t.name} holds no repository for this certificate's tenant`);
    }
    const repo = await Repository.open(remote, { recoveryKey });
    try {
      if (repo.id !== config.repository.id) {
        throw new HoldfastError('HF_CONFLICT', `target ${t.name} holds repository ${repo.id.slice(0, 8)} for this tenant, not the escrowed ${config.repository.id.slice(0, 8)}`);
      }
      if (!hasValidEscrowMac(config, repo.authKey('config escrow mac'))) {
        throw Object.assign(new HoldfastError('HF_REPO_CORRUPT',
          `the escrow opened, but its configuration is not authenticated by repository ${config.repository.id.slice(0, 8)}'s key: ` +
          'it was not made by the box that owned the repository (altered or forged); nothing was restored'), { fatal: true });
      }
    } finally {
      await repo.close();
    }
  } finally {
    await remote.close();
  }
}

/**
 * Rebuilds a lost box on a replacement from its configuration escrow
 * (docs/OPERATIONS.md, "Recover a replaced box"): opens the escrow with the
 * recovery key; refuses a data directory a configured or running engine
 * uses (HF_CONFLICT); clones the repository into DATA_DIR/repository from
 * the escrow's first target that serves it (in the escrow's order), with
 * the replacement's own certificate, after checking on the target's copy
 * that the configuration is authentic (its MAC, HF_REPO_CORRUPT); the local
 * copy then opens with the escrowed passphrase, or else with the recovery
 * key and gets a new passphrase; then writes the engine's state (the
 * repository record, sources with their secrets, schedules, retention,
 * protected snapshots, users, the escrow key) and the targets, so that
 * `Engine.open({ dataDir })` starts as the old box. An interrupted restore
 * can be run again: the clone resumes, and the state is written in one
 * transaction, last.
 */
export async function restoreFromEscrow(o: RestoreFromEscrowOptions): Promise<RestoreFromEscrowResult> {
  const progress = o.onProgress ?? (() => undefined);
  const config = openEscrow(o.escrow, o.recoveryKey);
  const escrowKey = EscrowKeyPair.fromRecoveryKey(o.recoveryKey);
  progress(`opened the escrow of ${config.box.name ?? config.box.hostname} (repository ${config.repository.id.slice(0, 8)}): ` +
    `${config.sources.length} sources, ${config.users.length} users, ${config.targets.length} targets`);
  const identity = await readIdentity(o.identity);
  if (config.box.name !== null && identity.tenant !== config.box.name) {
    throw new HoldfastError('HF_PKI_INVALID',
      `certificate ${o.identity.cert} is for ${identity.tenant}, but the old box replicated as ${config.box.name}: ` +
      `ask the fleet for the replacement's certificate under the name ${config.box.name} (the stores know the tenant by it)`);
  }
  if (config.targets.length === 0) {
    throw new HoldfastError('HF_TARGET_NOT_FOUND', 'the escrowed box had no replication target: there is no offsite copy to rebuild its repository from');
  }

  const dataDir = path.resolve(o.dataDir);
  const files = dataFiles(dataDir);
  await fsp.mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (await engineRunning(files.socket)) {
    throw new HoldfastError('HF_CONFLICT', `an engine is running on ${dataDir}: stop holdfast-engine before restoring into its data directory`);
  }
  const state = await StateStore.open(files.state, await ApplianceKey.load(files.key));
  try {
    const [users, sources, schedules] = await Promise.all([state.users(), state.sources(), state.schedules()]);
    if (users.length + sources.length + schedules.length > 0) {
      throw new HoldfastError('HF_CONFLICT',
        `${dataDir} already holds a configured appliance (${users.length} users, ${sources.length} sources, ${schedules.length} schedules): ` +
        'restore into a new data directory; nothing was changed');
    }

    // ---- the repository, from the first target that serves it ----
    const dest = await prepareRepositoryDir(files.repository, config.repository.id, progress);
    const failures: string[] = [];
    let cloned: { target: EscrowTarget; files: number; bytes: number } | null = null;
    for (const t of config.targets) {
      o.signal?.throwIfAborted();
      const tls: ClientTls = {
        ca: Buffer.from(t.ca ?? identity.ca), cert: Buffer.from(identity.cert), key: Buffer.from(identity.key),
        ...(t.servername ? { servername: t.servername } : {}),
      };
      progress(`trying target ${t.name} (${t.endpoints.map(endpointText).join(', ')})`);
      const client = new TargetClient({ name: t.name, endpoints: t.endpoints, tls, rounds: 2, backoffMs: 500, ...(o.signal ? { signal: o.signal } : {}) });
      try {
        await openRemote(t, tls, config, o.recoveryKey, o.signal);
        let got = 0;
        let last = Date.now();
        const r = await cloneRepository(client, dest, {
          ...(o.signal ? { signal: o.signal } : {}),
          onFile: (_type, _name, size) => {
            got += size;
            if (Date.now() - last > 2000) {
              last = Date.now();
              progress(`cloning from ${t.name}: ${got} bytes so far`);
            }
          },
        });
        progress(`cloned from ${t.name}: ${r.files} files (${r.bytes} bytes), ${r.present} already here`);
        cloned = { target: t, files: r.files, bytes: r.bytes };
        break;
      } catch (err) {
        if (o.signal?.aborted || errorCode(err) === 'HF_INTERRUPTED' || (err as { fatal?: boolean }).fatal) throw err;
        failures.push(`${t.name}: ${errorCode(err) ?? 'error'}: ${(err as Error).message}`);
        progress(`target ${t.name} failed: ${(err as Error).message}`);
      } finally {
        client.close();
      }
    }
    if (!cloned) {
      throw new HoldfastError('HF_TARGET_UNREACHABLE', `no target of the escrow could be cloned from: ${failures.join('; ')}`);
    }

    // ---- the local copy opens with the passphrase the engine will keep ----
    let password = config.repository.password;
    let repo = await Repository.open(dest, { password }).catch((err: unknown) => {
      if (errorCode(err) !== 'HF_WRONG_PASSWORD') throw err;
      return null;
    });
    if (!repo) {
      // The passphrase was changed after the escrow was sealed: the recovery key opens it, and a new one is set.
      repo = await Repository.open(dest, { recoveryKey: o.recoveryKey });
      password = randomBytes(32).toString('base64url');
      await repo.changePassphrase(password);
      progress('the escrowed passphrase no longer opens the repository: opened it with the recovery key and set a new passphrase');
    }
    let snapshots: number;
    try {
      snapshots = (await listSnapshots(repo)).snapshots.length;
    } finally {
      await repo.close();
    }

    // ---- targets, with the replacement's identity (as POST /v1/targets keeps them) ----
    const registry = new TargetRegistry(dest.location);
    const now = new Date().toISOString();
    for (const t of config.targets) {
      if ((await registry.list()).some((x) => x.name === t.name)) await registry.remove(t.name); // an interrupted restore's
      const dir = path.join(files.pki, 'targets', t.name);
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const pem = async (file: string, text: string) => {
        const p = path.join(dir, file);
        await fsp.writeFile(p, text, { mode: 0o600 });
        return p;
      };
      const tc: TargetConfig = {
        name: t.name, endpoints: t.endpoints, ca: await pem('ca.crt', t.ca ?? identity.ca), cert: await pem('appliance.crt', identity.cert),
        key: await pem('appliance.key', identity.key), rate: t.rate, windows: t.windows, spread: t.spread, added: now,
        ...(t.servername ? { servername: t.servername } : {}),
      };
      await registry.add(tc);
    }

    // ---- the engine's state, in one transaction, last ----
    progress('writing the configuration');
    await state.db.transaction(async () => {
      await state.setSealed('repository', { dir: dest.location, password });
      await state.setSealed('recovery-key', null); // shown at the old box's setup already
      await saveEscrowKey(state, escrowKey.publicKey, 'restore', now);
      for (const s of config.sources) await state.putSource(s.name, s.spec, s.secret, now);
      for (const s of config.schedules) await state.addSchedule({ job: s.job, subject: s.subject, cron: s.cron, enabled: s.enabled, lastFire: null });
      await state.setRetention(config.retention);
      for (const id of config.protected) await state.setProtected(id, true, 'escrow restore', now);
      for (const u of config.users) await state.addUser({ name: u.name, role: u.role, password: u.password, created: u.created });
      await state.audit('local', 'escrow.restore', {
        from: cloned.target.name, box: config.box.name, hostname: config.box.hostname, repository: config.repository.id, tenant: identity.tenant,
      }, Date.now());
    });
    return {
      sources: config.sources.length, schedules: config.schedules.length, targets: config.targets.length, snapshots, users: config.users.length,
      clonedFrom: cloned.target.name, tenant: identity.tenant, repository: dest.location, files: cloned.files, bytes: cloned.bytes,
    };
  } finally {
    await state.close();
  }
}
