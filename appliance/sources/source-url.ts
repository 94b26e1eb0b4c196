import fs from 'node:fs';
import path from 'node:path';

import { HoldfastError } from '../errors/index.ts';
import { LocalSource } from './local/index.ts';
import type { Source } from './source.ts';

/**
 * Where a backup reads from, parsed from the command line. The URL forms are
 * a stable contract:
 *
 *   smb://[DOMAIN;]USER@HOST[:PORT]/SHARE[/PATH]
 *   sftp://USER@HOST[:PORT]/PATH
 *
 * Passwords never appear in URLs (they would show in the process list).
 */
export type SourceSpec =
  | { kind: 'local'; paths: string[] }
  | { kind: 'smb'; host: string; port: number; domain: string; user: string; share: string; paths: string[] }
  | { kind: 'sftp'; host: string; port: number; user: string; paths: string[] };

/** Secrets and pins that do not belong in a URL. */
export interface SourceCredentials {
  /** SMB password. */
  password?: string;
  /** SFTP private key file. */
  identity?: string;
  /** SFTP private key itself (PEM/OpenSSH bytes), instead of a file. */
  identityKey?: Buffer;
  /** SFTP: known_hosts file to pin the host key. */
  knownHosts?: string;
  /** SFTP: the pinned host key fingerprint, "SHA256:…". */
  hostKey?: string;
  /** SMB: read a previous version: 'latest' or a time. */
  snapshot?: 'latest' | Date;
}

const invalid = (arg: string, why: string) =>
  new HoldfastError('HF_SOURCE_URL_INVALID', `source '${arg}': ${why}; the forms are smb://[DOMAIN;]USER@HOST[:PORT]/SHARE[/PATH] and sftp://USER@HOST[:PORT]/PATH`);

/**
 * Parses backup arguments: local paths (resolved against cwd), or URLs of one
 * server (and, for SMB, one share). Mixing local paths and URLs, or several
 * servers, is HF_USAGE; a malformed URL is HF_SOURCE_URL_INVALID.
 */
export function parseSourceArgs(args: readonly string[], cwd: string): SourceSpec {
  const isUrl = (a: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(a);
  if (!args.some(isUrl)) return { kind: 'local', paths: args.map((a) => path.resolve(cwd, a)) };
  if (!args.every(isUrl)) {
    throw new HoldfastError('HF_USAGE', 'back up either local paths or URLs of one server, not both in one snapshot');
  }
  const specs = args.map(parseSourceUrl);
  const first = specs[0]!;
  const origin = (s: SourceSpec) => JSON.stringify({ ...s, paths: [] });
  if (specs.some((s) => origin(s) !== origin(first))) {
    throw new HoldfastError('HF_USAGE', 'all URLs of one backup must name the same server, user, port (and share); run one backup per server');
  }
  return { ...first, paths: specs.flatMap((s) => s.paths) } as SourceSpec;
}

export function parseSourceUrl(arg: string): SourceSpec {
  let url: URL;
  try {
    url = new URL(arg);
  } catch {
    throw invalid(arg, 'not a URL');
  }
  const scheme = url.protocol.slice(0, -1).toLowerCase();
  if (scheme !== 'smb' && scheme !== 'sftp') throw invalid(arg, `unknown scheme '${scheme}'`);
  if (url.password) throw invalid(arg, 'a password in the URL would show in the process list; use HOLDFAST_SOURCE_PASSWORD or --source-password-file');
  if (url.search || url.hash) throw invalid(arg, 'no ?query or #fragment allowed (write "?" and "#" in names as %3F and %23)');
  const userinfo = decode(arg, url.username);
  if (!userinfo) throw invalid(arg, 'no user name (USER@HOST)');
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw invalid(arg, 'no host');
  const defaultPort = scheme === 'smb' ? 445 : 22;
  const port = url.port ? Number(url.port) : defaultPort;
  const segments = url.pathname.split('/').filter(Boolean).map((s) => decode(arg, s));
  if (segments.some((s) => s === '.' || s === '..' || s.includes('/') || s.includes('\0'))) {
    throw invalid(arg, 'path segments may not be ".", ".." or contain "/" or NUL');
  }
  if (scheme === 'smb') {
    const semi = userinfo.indexOf(';');
    const domain = semi >= 0 ? userinfo.slice(0, semi) : '';
    const user = semi >= 0 ? userinfo.slice(semi + 1) : userinfo;
    if (!user) throw invalid(arg, 'no user name after "DOMAIN;"');
    const share = segments[0];
    if (!share) throw invalid(arg, 'no share (smb://USER@HOST/SHARE)');
    return { kind: 'smb', host, port, domain, user, share, paths: [`/${segments.slice(1).join('/')}`] };
  }
  return { kind: 'sftp', host, port, user: userinfo, paths: [`/${segments.join('/')}`] };
}

function decode(arg: string, s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalid(arg, `bad percent-encoding in '${s}'`);
  }
}

/**
 * Connects to the source a spec names. Errors are coded (HF_SOURCE_*). The
 * protocol modules load only when used, so a local backup does not carry them.
 */
export async function openSource(spec: SourceSpec, creds: SourceCredentials): Promise<Source> {
  switch (spec.kind) {
    case 'local':
      return new LocalSource();
    case 'smb':
      if (creds.password === undefined) {
        throw new HoldfastError('HF_USAGE', `no password for ${spec.user}@${spec.host}: set HOLDFAST_SOURCE_PASSWORD or pass --source-password-file`);
      }
      const { SmbSource } = await import('./smb/index.ts');
      return SmbSource.connect({
        host: spec.host, port: spec.port, user: spec.user, domain: spec.domain, share: spec.share,
        password: creds.password, snapshot: creds.snapshot ?? null,
      });
    case 'sftp': {
      if (!creds.identity && !creds.identityKey) throw new HoldfastError('HF_USAGE', `no key for ${spec.user}@${spec.host}: pass --identity KEYFILE`);
      if (creds.snapshot) throw new HoldfastError('HF_USAGE', '--source-snapshot works with SMB shares only');
      let identity: Buffer;
      try {
        identity = creds.identityKey ?? fs.readFileSync(creds.identity!);
      } catch (err) {
        throw new HoldfastError('HF_INVALID_ARGUMENT', `cannot read the key file ${creds.identity}: ${(err as Error).message}`, { cause: err });
      }
      const { SftpSource } = await import('./sftp/index.ts');
      return SftpSource.connect({
        host: spec.host, port: spec.port, user: spec.user, identity,
        ...(creds.knownHosts ? { knownHosts: creds.knownHosts } : {}),
        ...(creds.hostKey ? { hostKey: creds.hostKey } : {}),
      });
    }
  }
}
