/**
 * Host key pinning for SFTP sources: OpenSSH fingerprints, known_hosts
 * parsing and matching. Holdfast never connects to a server whose key is
 * not pinned: there is no "trust on first use".
 */

import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';

import { HoldfastError } from '../../errors/index.ts';

/** A pinned fingerprint as `ssh-keygen -lf` prints it: "SHA256:" and 43 base64 characters. */
const FINGERPRINT = /^SHA256:[A-Za-z0-9+/]{43}$/;

/** The OpenSSH fingerprint of a public key blob: "SHA256:" + base64(sha256(blob)), no "=" padding. */
export function hostKeyFingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type a public key blob names in its first field ("ssh-ed25519", "ssh-rsa", …). */
export function keyTypeOf(blob: Buffer): string {
  if (blob.length < 4) return 'unknown';
  const n = blob.readUInt32BE(0);
  if (n > 64 || 4 + n > blob.length) return 'unknown';
  return blob.subarray(4, 4 + n).toString('latin1');
}

/** One key line of a known_hosts file. */
export interface KnownHostsLine {
  /** 1-based line number, for messages. */
  line: number;
  marker: '' | '@revoked' | '@cert-authority';
  /** The host field: comma-separated patterns or one hashed "|1|salt|hash" entry. */
  hosts: string;
  keyType: string;
  blob: Buffer;
}

/** Parses known_hosts text; comments, blank and malformed lines are skipped. */
export function parseKnownHosts(text: string): KnownHostsLine[] {
  const out: KnownHostsLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const fields = lines[i]!.trim().split(/\s+/);
    if (!fields[0] || fields[0].startsWith('#')) continue;
    let marker: KnownHostsLine['marker'] = '';
    if (fields[0] === '@revoked' || fields[0] === '@cert-authority') marker = fields.shift() as KnownHostsLine['marker'];
    const [hosts, keyType, b64] = fields;
    if (!hosts || !keyType || !b64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) continue;
    out.push({ line: i + 1, marker, hosts, keyType, blob: Buffer.from(b64, 'base64') });
  }
  return out;
}

/** The name known_hosts uses for a server: "host" on port 22, "[host]:port" otherwise. */
export function knownHostsName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/**
 * Whether a known_hosts host field matches `name` (from knownHostsName):
 * a hashed "|1|salt|hash" entry, or comma-separated patterns with `*` and
 * `?` wildcards, where a matching "!pattern" excludes the line.
 */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    const want = Buffer.from(hash, 'base64');
    const got = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest();
    return want.length === got.length && timingSafeEqual(want, got);
  }
  let matched = false;
  for (const raw of field.split(',')) {
    const negated = raw.startsWith('!');
    const pattern = (negated ? raw.slice(1) : raw).toLowerCase();
    if (!pattern || !globMatches(pattern, name)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

function globMatches(pattern: string, name: string): boolean {
  if (!/[*?]/.test(pattern)) return pattern === name;
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`).test(name);
}

/** What the admin pinned for one server. */
export interface HostKeyPinOptions {
  host: string;
  port: number;
  /** Pinned fingerprint, "SHA256:…" as `ssh-keygen -lf` prints it. */
  hostKey?: string;
  /** A known_hosts file (OpenSSH format). */
  knownHosts?: string;
}

/** Host key algorithms ssh2 offers, best first. */
const HOST_KEY_ALGORITHMS = [
  'ssh-ed25519', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521',
  'rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa',
] as const;
export type HostKeyAlgorithm = (typeof HOST_KEY_ALGORITHMS)[number];

/**
 * The pins for one server, checked against the key it presents.
 *
 * - check MUST accept only a key whose fingerprint equals `hostKey`, or whose
 *   type and blob equal a known_hosts line for this host (not @revoked).
 * - No pin for this host at all is HF_SOURCE_HOST_KEY_UNKNOWN; a pin that
 *   does not match (or a @revoked key) is HF_SOURCE_HOST_KEY_CHANGED. Both
 *   messages give the server's key type and fingerprint and how to pin it.
 */
export class HostKeyPins {
  readonly #where: string;
  readonly #name: string;
  readonly #hostKey: string | null;
  readonly #knownHostsFile: string | null;
  readonly #lines: KnownHostsLine[];

  private constructor(where: string, name: string, hostKey: string | null, file: string | null, lines: KnownHostsLine[]) {
    this.#where = where;
    this.#name = name;
    this.#hostKey = hostKey;
    this.#knownHostsFile = file;
    this.#lines = lines;
  }

  /**
   * Validates the pin options and reads the known_hosts file once (a bad
   * fingerprint or an unreadable file is HF_INVALID_ARGUMENT).
   */
  static load(opts: HostKeyPinOptions): HostKeyPins {
    const where = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`;
    if (opts.hostKey !== undefined && !FINGERPRINT.test(opts.hostKey)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT',
        `host key pin '${opts.hostKey}' for ${where}: give the fingerprint as \`ssh-keygen -lf\` prints it, "SHA256:" and 43 characters`);
    }
    let lines: KnownHostsLine[] = [];
    const name = knownHostsName(opts.host, opts.port);
    if (opts.knownHosts !== undefined) {
      let text: string;
      try {
        text = fs.readFileSync(opts.knownHosts, 'utf8');
      } catch (err) {
        throw new HoldfastError('HF_INVALID_ARGUMENT',
          `cannot read the known_hosts file ${opts.knownHosts}: ${(err as Error).message}`, { cause: err });
      }
      lines = parseKnownHosts(text).filter((l) => l.marker !== '@cert-authority' && hostFieldMatches(l.hosts, name));
    }
    return new HostKeyPins(where, name, opts.hostKey ?? null, opts.knownHosts ?? null, lines);
  }

  /**
   * Host key algorithms to offer: the types pinned in known_hosts first (so
   * a server with several keys presents the pinned one), then the rest.
   */
  get algorithms(): HostKeyAlgorithm[] {
    const first: HostKeyAlgorithm[] = [];
    for (const l of this.#lines) {
      if (l.marker) continue;
      const algs = l.keyType === 'ssh-rsa' ? (['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] as const) : [l.keyType];
      for (const a of algs) {
        if ((HOST_KEY_ALGORITHMS as readonly string[]).includes(a) && !first.includes(a as HostKeyAlgorithm)) first.push(a as HostKeyAlgorithm);
      }
    }
    return [...first, ...HOST_KEY_ALGORITHMS.filter((a) => !first.includes(a))];
  }

  /** Null when the key is pinned; otherwise the error to fail the connection with. */
  check(blob: Buffer): HoldfastError | null {
    const fp = hostKeyFingerprint(blob);
    const type = keyTypeOf(blob);
    const same = (l: KnownHostsLine) => l.keyType === type && l.blob.equals(blob);
    const revoked = this.#lines.find((l) => l.marker === '@revoked' && same(l));
    if (revoked) {
      return new HoldfastError('HF_SOURCE_HOST_KEY_CHANGED',
        `${this.#where} presents the ${type} host key ${fp}, which ${this.#knownHostsFile} line ${revoked.line} marks @revoked; ` +
        'do not connect until the server has a new key, then pin that one');
    }
    if (this.#hostKey === fp) return null;
    if (this.#lines.some((l) => !l.marker && same(l))) return null;

    const pinHow = `pin it with --host-key ${fp}, or add the line '${this.#name} ${type} ${blob.toString('base64')}' to ${this.#knownHostsFile ?? 'a known_hosts file given with --known-hosts'}`;
    const pins: string[] = [];
    if (this.#hostKey) pins.push(`--host-key ${this.#hostKey}`);
    for (const l of this.#lines) if (!l.marker) pins.push(`${l.keyType} ${hostKeyFingerprint(l.blob)} (${this.#knownHostsFile} line ${l.line})`);
    if (pins.length === 0) {
      return new HoldfastError('HF_SOURCE_HOST_KEY_UNKNOWN',
        `${this.#where} presents the ${type} host key ${fp}, and no pin for this server was given. ` +
        `Check the fingerprint out of band (on the server: ssh-keygen -lf /etc/ssh/ssh_host_${type.replace(/^ssh-|-.*$/g, '')}_key.pub), then ${pinHow}`,
        { details: { keyType: type, fingerprint: fp } });
    }
    return new HoldfastError('HF_SOURCE_HOST_KEY_CHANGED',
      `${this.#where} presents the ${type} host key ${fp}, which is not the pinned key (${pins.join('; ')}). ` +
      `The server may have been reinstalled, or someone is intercepting the connection. Verify the new fingerprint out of band; if the change is expected, ${pinHow}`,
      { details: { keyType: type, fingerprint: fp } });
  }
}
