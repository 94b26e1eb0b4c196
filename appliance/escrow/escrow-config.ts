import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';

import { HoldfastError } from '../errors/index.ts';
import type { RetentionPolicy } from '../snapshot/index.ts';
import type { SourceSpec } from '../sources/index.ts';

/** The plaintext's own version (inside the sealed escrow; the envelope has its magic and version byte). */
export const ESCROW_CONFIG_VERSION = 1;

/** A source with its secrets, unsealed (they are sealed again, by the new box's appliance key, at restore). */
export interface EscrowSource {
  name: string;
  spec: SourceSpec;
  secret: { password?: string; identityKey?: string; hostKey?: string };
}

export interface EscrowSchedule {
  job: 'backup' | 'replicate' | 'prune' | 'verify';
  /** The source (backup) or target (replicate; null: all). */
  subject: string | null;
  cron: string;
  enabled: boolean;
}

/** A console user with its scrypt record, so that people keep their passwords. */
export interface EscrowUser {
  name: string;
  role: 'admin' | 'operator' | 'viewer';
  /** "scrypt$N$r$p$salt$hash", as the engine stores it. */
  password: string;
  created: string;
}

/**
 * A replication target without the box's own certificate and key: a
 * replacement box brings its own (fleet-issued, same name = same tenant).
 */
export interface EscrowTarget {
  name: string;
  endpoints: { host: string; port: number }[];
  /** The CA that verifies the store's certificate (PEM text); null when its file could not be read. */
  ca: string | null;
  /** The CN of the certificate the box replicated with: the tenant at the store. */
  tenant: string | null;
  servername: string | null;
  rate: string | null;
  windows: string[];
  spread: boolean;
}

/**
 * What a replacement box needs to become the box it replaces
 * (docs/DESIGN.md, "Configuration escrow"). Secrets are in the clear here:
 * this object exists only inside a sealed escrow, in the engine while it
 * seals one, and in the process that restores from one.
 */
export interface EscrowConfig {
  version: typeof ESCROW_CONFIG_VERSION;
  /** Hints for people and for checks: the old box's host name, its tenant name (null: it had no target), its program. */
  box: { hostname: string; name: string | null; program: string };
  /** The repository's id and the engine's random passphrase. */
  repository: { id: string; password: string };
  sources: EscrowSource[];
  schedules: EscrowSchedule[];
  retention: RetentionPolicy | null;
  /** Snapshot ids retention never forgets. */
  protected: string[];
  users: EscrowUser[];
  targets: EscrowTarget[];
  /**
   * HMAC-SHA-256 of the canonical JSON of everything else, keyed by the
   * repository's Repository.authKey('config escrow mac'), hex: only a holder
   * of the repository's master key made this configuration (escrowMac).
   */
  mac: string;
}

/**
 * JSON with object keys sorted (by UTF-16 code units) at every level, no
 * whitespace, undefined members left out: equal configurations give equal
 * bytes, whatever order the engine read them in.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

/**
 * The MAC that binds a configuration to its repository (EscrowConfig.mac):
 * sealing needs only the public key, so without it anyone who learnt the
 * escrow public key could seal a configuration of their own (an admin of
 * theirs, a source pointing elsewhere). key = Repository.authKey('config
 * escrow mac'); a restore checks it on the repository the recovery key opens.
 */
export function escrowMac(config: Omit<EscrowConfig, 'mac'>, key: Buffer): string {
  const { mac: _, ...rest } = config as EscrowConfig;
  return createHmac('sha256', key).update(canonicalJson(rest)).digest('hex');
}

/** Whether config.mac is the MAC under key (escrowMac), compared in constant time. */
export function hasValidEscrowMac(config: EscrowConfig, key: Buffer): boolean {
  const want = Buffer.from(escrowMac(config, key), 'hex');
  const got = Buffer.from(config.mac, 'hex');
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * The change token of a configuration (the `x-holdfast-escrow-sha256`
 * header): HMAC-SHA-256 of its canonical JSON, keyed by HKDF(the repository
 * passphrase, salt = repository id, info "holdfast v1 escrow digest"), hex.
 * Equal configurations give equal tokens; someone without the passphrase
 * (the vendor) learns nothing from a token but whether it changed: an
 * unkeyed hash would let whoever sees it confirm a guessed configuration.
 */
export function escrowDigest(config: EscrowConfig): string {
  const key = Buffer.from(hkdfSync('sha256', Buffer.from(config.repository.password, 'utf8'), Buffer.from(config.repository.id, 'hex'), 'holdfast v1 escrow digest', 32));
  return createHmac('sha256', key).update(canonicalJson(config)).digest('hex');
}

/** The configuration with every secret replaced by a marker: for showing to people (`holdfast escrow show`). */
export function maskEscrowConfig(config: EscrowConfig): EscrowConfig {
  const set = (v: string | undefined) => (v === undefined ? undefined : '(set)');
  return {
    ...config,
    repository: { id: config.repository.id, password: '(hidden)' },
    mac: config.mac,
    sources: config.sources.map((s) => ({
      ...s, secret: { password: set(s.secret.password), identityKey: set(s.secret.identityKey), hostKey: s.secret.hostKey },
    })),
    users: config.users.map((u) => ({ ...u, password: '(scrypt hash)' })),
  } as EscrowConfig;
}

// ---- validation of a plaintext that opened (authentic, but maybe of another release) ----

function corrupt(what: string): HoldfastError {
  return new HoldfastError('HF_REPO_CORRUPT', `the configuration escrow opened, but ${what}: it was not written by a compatible Holdfast`);
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown, what: string): string => {
  if (typeof v !== 'string') throw corrupt(`${what} is not a string`);
  return v;
};
const strOrNull = (v: unknown, what: string): string | null => (v === null || v === undefined ? null : str(v, what));
const arr = (v: unknown, what: string): unknown[] => {
  if (!Array.isArray(v)) throw corrupt(`${what} is not a list`);
  return v;
};
const obj = (v: unknown, what: string): Obj => {
  if (!isObj(v)) throw corrupt(`${what} is not an object`);
  return v;
};
const oneOf = <T extends string>(v: unknown, all: readonly T[], what: string): T => {
  if (!(all as readonly unknown[]).includes(v)) throw corrupt(`${what} is ${JSON.stringify(v)}, not one of ${all.join(', ')}`);
  return v as T;
};

function sourceSpecOf(v: unknown, what: string): SourceSpec {
  const s = obj(v, what);
  const paths = arr(s.paths, `${what}.paths`).map((p, i) => str(p, `${what}.paths[${i}]`));
  const kind = oneOf(s.kind, ['local', 'smb', 'sftp'] as const, `${what}.kind`);
  if (kind === 'local') return { kind, paths };
  const port = s.port;
  if (!Number.isInteger(port)) throw corrupt(`${what}.port is not a port number`);
  if (kind === 'smb') {
    return { kind, host: str(s.host, `${what}.host`), port: port as number, domain: str(s.domain, `${what}.domain`), user: str(s.user, `${what}.user`), share: str(s.share, `${what}.share`), paths };
  }
  return { kind, host: str(s.host, `${what}.host`), port: port as number, user: str(s.user, `${what}.user`), paths };
}

function retentionOf(v: unknown): RetentionPolicy | null {
  if (v === null || v === undefined) return null;
  const o = obj(v, 'retention');
  const p: RetentionPolicy = {};
  for (const k of ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
    if (o[k] === undefined) continue;
    if (!Number.isInteger(o[k]) || (o[k] as number) < 0) throw corrupt(`retention.${k} is not a whole number`);
    p[k] = o[k] as number;
  }
  if (o.tags !== undefined) p.tags = arr(o.tags, 'retention.tags').map((t, i) => str(t, `retention.tags[${i}]`));
  return p;
}

/**
 * Checks the shape of an opened escrow's plaintext: HF_UNSUPPORTED_VERSION
 * for a newer version, HF_REPO_CORRUPT for anything else that does not fit.
 */
export function parseEscrowConfig(value: unknown): EscrowConfig {
  const c = obj(value, 'the configuration');
  if (c.version !== ESCROW_CONFIG_VERSION) {
    if (typeof c.version === 'number' && c.version > ESCROW_CONFIG_VERSION) {
      throw new HoldfastError('HF_UNSUPPORTED_VERSION',
        `the configuration escrow has content version ${c.version}; this Holdfast reads version ${ESCROW_CONFIG_VERSION}: upgrade Holdfast`);
    }
    throw corrupt(`its version is ${JSON.stringify(c.version)}`);
  }
  const box = obj(c.box, 'box');
  const repo = obj(c.repository, 'repository');
  const id = str(repo.id, 'repository.id');
  if (!/^[0-9a-f]{64}$/.test(id)) throw corrupt('repository.id is not a repository id');
  const mac = str(c.mac, 'mac');
  if (!/^[0-9a-f]{64}$/.test(mac)) throw corrupt('mac is not a MAC');
  return {
    version: ESCROW_CONFIG_VERSION,
    box: { hostname: str(box.hostname, 'box.hostname'), name: strOrNull(box.name, 'box.name'), program: str(box.program, 'box.program') },
    repository: { id, password: str(repo.password, 'repository.password') },
    sources: arr(c.sources, 'sources').map((v, i) => {
      const s = obj(v, `sources[${i}]`);
      const secret = obj(s.secret ?? {}, `sources[${i}].secret`);
      const out: EscrowSource['secret'] = {};
      for (const k of ['password', 'identityKey', 'hostKey'] as const) if (secret[k] !== undefined) out[k] = str(secret[k], `sources[${i}].secret.${k}`);
      return { name: str(s.name, `sources[${i}].name`), spec: sourceSpecOf(s.spec, `sources[${i}].spec`), secret: out };
    }),
    schedules: arr(c.schedules, 'schedules').map((v, i) => {
      const s = obj(v, `schedules[${i}]`);
      return {
        job: oneOf(s.job, ['backup', 'replicate', 'prune', 'verify'] as const, `schedules[${i}].job`),
        subject: strOrNull(s.subject, `schedules[${i}].subject`), cron: str(s.cron, `schedules[${i}].cron`), enabled: s.enabled !== false,
      };
    }),
    retention: retentionOf(c.retention),
    protected: arr(c.protected, 'protected').map((v, i) => str(v, `protected[${i}]`)),
    users: arr(c.users, 'users').map((v, i) => {
      const u = obj(v, `users[${i}]`);
      return {
        name: str(u.name, `users[${i}].name`), role: oneOf(u.role, ['admin', 'operator', 'viewer'] as const, `users[${i}].role`),
        password: str(u.password, `users[${i}].password`), created: str(u.created, `users[${i}].created`),
      };
    }),
    targets: arr(c.targets, 'targets').map((v, i) => {
      const t = obj(v, `targets[${i}]`);
      return {
        name: str(t.name, `targets[${i}].name`),
        endpoints: arr(t.endpoints, `targets[${i}].endpoints`).map((e, j) => {
          const ep = obj(e, `targets[${i}].endpoints[${j}]`);
          if (!Number.isInteger(ep.port)) throw corrupt(`targets[${i}].endpoints[${j}].port is not a port number`);
          return { host: str(ep.host, `targets[${i}].endpoints[${j}].host`), port: ep.port as number };
        }),
        ca: strOrNull(t.ca, `targets[${i}].ca`), tenant: strOrNull(t.tenant, `targets[${i}].tenant`),
        servername: strOrNull(t.servername, `targets[${i}].servername`), rate: strOrNull(t.rate, `targets[${i}].rate`),
        windows: arr(t.windows ?? [], `targets[${i}].windows`).map((w, j) => str(w, `targets[${i}].windows[${j}]`)),
        spread: t.spread === true,
      };
    }),
    mac,
  };
}
