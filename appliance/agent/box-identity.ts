import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { HoldfastError, errorCode } from '../errors/index.ts';
import { makeCertificateRequest } from '../pki/index.ts';
import { writeFileAtomic } from '../storage/index.ts';
import { FleetClient } from './fleet-client.ts';
import type { Provisioning } from './provisioning-file.ts';

/**
 * The box's identity: the name the fleet gave it (its certificate's CN, its
 * tenant at the offsite stores), its key (made here, never sent anywhere)
 * and its certificate from the vendor CA. One JSON file written atomically,
 * so a key and a certificate that do not belong together are never on disk;
 * box.crt, box.key and ca.crt beside it are copies for other programs
 * (replication targets, `holdfast clone`).
 */
export interface BoxIdentity {
  name: string;
  fleet: string;
  keyPem: string;
  certPem: string;
  caPem: string;
  enrolled: string;
  /** The box was enrolled with a replacement token (it took over another box's name). */
  replacement: boolean;
}

export function identityFiles(dataDir: string) {
  return {
    identity: path.join(dataDir, 'identity.json'),
    cert: path.join(dataDir, 'box.crt'),
    key: path.join(dataDir, 'box.key'),
    ca: path.join(dataDir, 'ca.crt'),
  };
}

export async function loadIdentity(dataDir: string): Promise<BoxIdentity | null> {
  try {
    return JSON.parse(await fsp.readFile(identityFiles(dataDir).identity, 'utf8')) as BoxIdentity;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    throw new HoldfastError('HF_IO', `cannot read the box identity in ${dataDir}: ${(err as Error).message}; enroll again with a new token`, { cause: err });
  }
}

export async function saveIdentity(dataDir: string, id: BoxIdentity): Promise<void> {
  const f = identityFiles(dataDir);
  await fsp.mkdir(dataDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(f.identity, `${JSON.stringify(id, null, 2)}\n`, { mode: 0o600, exclusive: false });
  await writeFileAtomic(f.key, id.keyPem, { mode: 0o600, exclusive: false });
  await writeFileAtomic(f.cert, id.certPem, { mode: 0o644, exclusive: false });
  await writeFileAtomic(f.ca, id.caPem, { mode: 0o644, exclusive: false });
}

/**
 * Enrolls the box once: an existing identity is kept (a second boot does not
 * enroll again). Otherwise a new key and CSR, the provisioning token, and
 * the certificate the fleet returns.
 */
export async function enrollBox(dataDir: string, p: Provisioning): Promise<{ identity: BoxIdentity; enrolledNow: boolean }> {
  const have = await loadIdentity(dataDir);
  if (have) return { identity: have, enrolledNow: false };
  const { keyPem, csrPem } = await makeCertificateRequest('box');
  const client = new FleetClient(p.fleet, { ca: p.ca });
  try {
    const r = await client.call<{ name: string; certificate: string; ca: string; replaced: boolean }>('POST', '/v1/enroll', {
      token: p.token, csr: csrPem, hostname: os.hostname(), channel: p.channel,
    });
    const identity: BoxIdentity = {
      name: r.name, fleet: p.fleet, keyPem, certPem: r.certificate, caPem: p.ca, enrolled: new Date().toISOString(), replacement: r.replaced,
    };
    await saveIdentity(dataDir, identity);
    return { identity, enrolledNow: true };
  } finally {
    await client.close();
  }
}

/** A new key for the box: the fleet certifies it; the old certificate is revoked when the new one is first used. */
export async function rotateIdentity(dataDir: string, current: BoxIdentity, client: FleetClient): Promise<BoxIdentity> {
  const { keyPem, csrPem } = await makeCertificateRequest(current.name);
  const r = await client.call<{ certificate: string }>('POST', '/v1/renew', { csr: csrPem });
  const next: BoxIdentity = { ...current, keyPem, certPem: r.certificate };
  await saveIdentity(dataDir, next);
  return next;
}

/**
 * The configuration escrows the fleet holds for this box (a replacement box
 * gets those of the box it replaced), newest first, as long as `accept`
 * refuses them: a replacement box whose fresh engine escrowed its own empty
 * configuration before the restore (the agent does not, but an older one
 * might have) still finds the lost box's among the ten the fleet keeps.
 */
export async function fetchEscrow<T>(dataDir: string, accept: (blob: Buffer) => T): Promise<T> {
  const id = await loadIdentity(dataDir);
  if (!id) throw new HoldfastError('HF_USAGE', `the box is not enrolled (no identity in ${dataDir}): start holdfast-agent with its provisioning file first`);
  const client = new FleetClient(id.fleet, { ca: id.caPem, cert: id.certPem, key: id.keyPem });
  try {
    const newest = await client.getWithHeaders('/v1/escrow');
    let version = Number(newest.headers['x-holdfast-escrow-version'] ?? 1);
    let blob = newest.body;
    for (;;) {
      try {
        return accept(blob);
      } catch (err) {
        if (errorCode(err) !== 'HF_ESCROW_LOCKED' || --version < 1) throw err;
      }
      try {
        blob = await client.getBuffer(`/v1/escrow?version=${version}`);
      } catch (err) {
        if (errorCode(err) === 'HF_ESCROW_NOT_FOUND') throw new HoldfastError('HF_ESCROW_LOCKED', 'no configuration escrow the fleet holds for this box opens with this recovery key: is it the lost box\'s?', { cause: err });
        throw err;
      }
    }
  } finally {
    await client.close();
  }
}

/** Written by `holdfast restore-box`: a replacement box escrows its configuration only after it was restored (or set up on purpose without). */
export const RESTORED_MARKER = 'replacement-restored';
