import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { syncDir } from '../storage/index.ts';
import type { Endpoint } from './store-connection.ts';

export const TARGET_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** A replication target as `holdfast target add` recorded it. */
export interface TargetConfig {
  name: string;
  endpoints: Endpoint[];
  /** Absolute paths of the CA, this appliance's certificate and key. */
  ca: string;
  cert: string;
  key: string;
  servername?: string;
  /** As given (`20MiB/s`); null = unlimited. */
  rate: string | null;
  /** As given (`Mon-Fri 08:00-18:00=2MiB/s`). */
  windows: string[];
  spread: boolean;
  added: string;
}

/** What the last runs of replication to a target found (appliance-local). */
export interface TargetState {
  lastAttempt: string | null;
  lastSuccess: string | null;
  lastError: { code: string; message: string; at: string } | null;
  endpoint: string | null;
  /** Files the store confirmed holding at the end of the last successful run: "type/name". */
  confirmed: string[];
}

const EMPTY_STATE: TargetState = { lastAttempt: null, lastSuccess: null, lastError: null, endpoint: null, confirmed: [] };

/** Parses `HOST:PORT[,HOST:PORT…]` (IPv6 as `[::1]:7443`). */
export function parseEndpoints(text: string): Endpoint[] {
  const out: Endpoint[] = [];
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(part);
    const port = m ? Number(m[3]) : NaN;
    if (!m || !(port >= 1 && port <= 65535)) {
      throw new HoldfastError('HF_USAGE', `endpoint ${JSON.stringify(part)} is not HOST:PORT (e.g. store1.example.net:7443 or [2001:db8::1]:7443)`);
    }
    out.push({ host: m[1] ?? m[2]!, port });
  }
  if (out.length === 0) throw new HoldfastError('HF_USAGE', 'no endpoint given: --endpoint HOST:PORT[,HOST:PORT…]');
  return out;
}

async function writeJson(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    const fh = await fsp.open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify(value, null, 2)}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await syncDir(path.dirname(file));
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw ioError(`cannot write ${file}`, err);
  }
}

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as T;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    throw new HoldfastError('HF_REPO_CORRUPT', `cannot read ${file}: ${(err as Error).message}; fix or remove it and add the targets again`, { cause: err });
  }
}

/**
 * The appliance's replication targets and their state, kept beside the
 * repository in `<repo>/replication/` (never replicated: it names local
 * key files and says nothing a store needs).
 */
export class TargetRegistry {
  readonly dir: string;

  constructor(repoDir: string) {
    this.dir = path.join(path.resolve(repoDir), 'replication');
  }

  async list(): Promise<TargetConfig[]> {
    const f = await readJson<{ version: number; targets: TargetConfig[] }>(path.join(this.dir, 'targets.json'));
    return f?.targets ?? [];
  }

  async get(name: string): Promise<TargetConfig> {
    const t = (await this.list()).find((x) => x.name === name);
    if (!t) {
      const names = (await this.list()).map((x) => x.name);
      throw new HoldfastError('HF_TARGET_NOT_FOUND',
        `no target named ${JSON.stringify(name)}${names.length ? ` (targets: ${names.join(', ')})` : '; add one with `holdfast target add`'}`);
    }
    return t;
  }

  async #save(targets: TargetConfig[]): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 }).catch((err: unknown) => { throw ioError(`cannot create ${this.dir}`, err); });
    await writeJson(path.join(this.dir, 'targets.json'), { version: 1, targets });
  }

  async add(t: TargetConfig): Promise<void> {
    if (!TARGET_NAME.test(t.name)) throw new HoldfastError('HF_USAGE', `target name ${JSON.stringify(t.name)}: use lowercase letters, digits and dashes`);
    const all = await this.list();
    if (all.some((x) => x.name === t.name)) {
      throw new HoldfastError('HF_TARGET_EXISTS', `a target named ${t.name} exists; remove it first (holdfast target remove ${t.name})`);
    }
    await this.#save([...all, t]);
  }

  async remove(name: string): Promise<void> {
    await this.get(name);
    await this.#save((await this.list()).filter((x) => x.name !== name));
    await fsp.unlink(path.join(this.dir, `state-${name}.json`)).catch(() => undefined);
  }

  async state(name: string): Promise<TargetState> {
    return { ...EMPTY_STATE, ...(await readJson<TargetState>(path.join(this.dir, `state-${name}.json`))) };
  }

  async saveState(name: string, s: TargetState): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 }).catch(() => undefined);
    await writeJson(path.join(this.dir, `state-${name}.json`), s);
  }
}
