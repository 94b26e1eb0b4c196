import fsp from 'node:fs/promises';

import { HoldfastError, errorCode } from '../errors/index.ts';

/**
 * What provisioning bakes into a box's image (`npm run channel -- token
 * --provisioning FILE`): where the fleet is, the vendor CA to trust it by,
 * a one-time enrollment token, and the TUF root the box starts trusting
 * releases from. JSON, mode 0600 (the token is a secret until used).
 */
export interface Provisioning {
  format: 'holdfast-provisioning';
  version: 1;
  /** https://HOST:PORT of the fleet service. */
  fleet: string;
  token: string;
  /** The vendor CA (PEM). */
  ca: string;
  /** The release channel's trusted TUF root.json (parsed). */
  tufRoot: Record<string, unknown>;
  channel: 'stable' | 'beta';
}

export async function readProvisioning(file: string): Promise<Provisioning> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') throw new HoldfastError('HF_USAGE', `no provisioning file at ${file}: the image build puts one there (provisioning/README.md)`);
    throw new HoldfastError('HF_IO', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  let p: Partial<Provisioning>;
  try {
    p = JSON.parse(text) as Partial<Provisioning>;
  } catch (cause) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `the provisioning file ${file} is not JSON`, { cause });
  }
  const bad = (why: string) => new HoldfastError('HF_INVALID_ARGUMENT', `the provisioning file ${file}: ${why}; build a new one with \`npm run channel -- token --provisioning\``);
  if (p.format !== 'holdfast-provisioning' || p.version !== 1) throw bad('not a version 1 holdfast-provisioning file');
  if (typeof p.fleet !== 'string' || !/^https:\/\/[^/]+\/?$/.test(p.fleet)) throw bad('fleet must be https://HOST:PORT');
  if (typeof p.token !== 'string' || p.token.length < 10) throw bad('token is missing');
  if (typeof p.ca !== 'string' || !p.ca.includes('-----BEGIN CERTIFICATE-----')) throw bad('ca must be the vendor CA in PEM');
  if (typeof p.tufRoot !== 'object' || p.tufRoot === null) throw bad('tufRoot must be the TUF root.json');
  if (p.channel !== 'stable' && p.channel !== 'beta') throw bad('channel must be stable or beta');
  return { ...(p as Provisioning), fleet: p.fleet.replace(/\/$/, '') };
}
