import { HoldfastError } from '../errors/index.ts';
import { type FileType, validName } from '../storage/index.ts';

/** File types that travel (locks never do). */
export const REPLICATED_TYPES = ['config', 'key', 'pack', 'index', 'snapshot'] as const satisfies readonly FileType[];
export type ReplicatedType = (typeof REPLICATED_TYPES)[number];

export const MAX_HAVE = 1000;
export const MAX_LIST = 5000;
/**
 * Bytes of one upload the store accepts ahead of writing and hashing them.
 * It also bounds what a front-end that dies can lose per upload: with the
 * client's 4 uploads in flight, at most 8 MiB is sent again after a failover.
 */
export const PUT_WINDOW = 2 << 20;
export const MAX_GET_WINDOW = 16 << 20;

export interface FileRef {
  type: ReplicatedType;
  name: string;
  digest?: string;
}

export type HaveState = { state: 'complete'; size: number } | { state: 'partial'; offset: number } | { state: 'absent' };

export interface Hello {
  versions: number[];
  client: string;
  capabilities: string[];
  maxFrame?: number;
}

export interface Welcome {
  version: number;
  tenant: string;
  store: string;
  capabilities: string[];
  maxFrame: number;
  maxStreams: number;
  window: number;
  graceSeconds: number;
  quota: number | null;
}

export type Request =
  | { op: 'HAVE'; files: FileRef[] }
  | { op: 'PUT'; type: ReplicatedType; name: string; size: number; digest: string; offset: number }
  | { op: 'GET'; type: ReplicatedType; name: string; offset?: number; length?: number; window?: number }
  | { op: 'LIST'; type: ReplicatedType; after?: string; limit?: number }
  | { op: 'DELETE'; type: ReplicatedType; name: string }
  | { op: 'STAT'; type?: ReplicatedType; name?: string };

export interface WireError {
  code: string;
  message: string;
  retryable: boolean;
}

const HEX64 = /^[0-9a-f]{64}$/;

function malformed(what: string): HoldfastError {
  return new HoldfastError('HF_PROTO_MALFORMED', what);
}

/** Parses a control payload: a JSON object, or HF_PROTO_MALFORMED. */
export function parseJson(payload: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    throw malformed(`${what}: payload is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw malformed(`${what}: payload is not a JSON object`);
  return v as Record<string, unknown>;
}

function int(o: Record<string, unknown>, key: string, what: string, optional = false): number | undefined {
  const v = o[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw malformed(`${what}: ${key} must be a whole number ≥ 0`);
  return v;
}

function str(o: Record<string, unknown>, key: string, what: string, optional = false): string | undefined {
  const v = o[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string' || v.length > 256) throw malformed(`${what}: ${key} must be a short string`);
  return v;
}

function fileType(o: Record<string, unknown>, what: string): ReplicatedType {
  const t = o.type;
  if (typeof t !== 'string' || !(REPLICATED_TYPES as readonly string[]).includes(t)) {
    throw malformed(`${what}: type must be one of ${REPLICATED_TYPES.join(', ')}`);
  }
  return t as ReplicatedType;
}

function fileName(o: Record<string, unknown>, type: ReplicatedType, what: string): string {
  const n = str(o, 'name', what)!;
  if (!validName(type, n)) throw malformed(`${what}: ${JSON.stringify(n)} is not a valid ${type} name`);
  return n;
}

function digest(o: Record<string, unknown>, what: string, optional = false): string | undefined {
  const d = str(o, 'digest', what, optional);
  if (d !== undefined && !HEX64.test(d)) throw malformed(`${what}: digest must be 64 lowercase hex digits`);
  return d;
}

/** For packs, index files and snapshots the name is the digest. */
export function contentAddressed(type: ReplicatedType): boolean {
  return type === 'pack' || type === 'index' || type === 'snapshot';
}

function fileRef(v: unknown, what: string): FileRef {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw malformed(`${what}: file entries must be objects`);
  const o = v as Record<string, unknown>;
  const type = fileType(o, what);
  const name = fileName(o, type, what);
  const d = digest(o, what, true);
  if (contentAddressed(type) && d !== undefined && d !== name) throw malformed(`${what}: a ${type}'s digest is its name`);
  return d === undefined ? { type, name } : { type, name, digest: d };
}

/** Validates a REQUEST payload (docs/PROTOCOL.md, "Operations"). */
export function parseRequest(payload: Buffer): Request {
  const o = parseJson(payload, 'REQUEST');
  const op = o.op;
  switch (op) {
    case 'HAVE': {
      const files = o.files;
      if (!Array.isArray(files) || files.length === 0 || files.length > MAX_HAVE) {
        throw malformed(`HAVE: files must list 1 to ${MAX_HAVE} entries`);
      }
      return { op, files: files.map((f) => fileRef(f, 'HAVE')) };
    }
    case 'PUT': {
      const type = fileType(o, 'PUT');
      const name = fileName(o, type, 'PUT');
      const d = digest(o, 'PUT')!;
      if (contentAddressed(type) && d !== name) throw malformed(`PUT: a ${type}'s digest is its name`);
      return { op, type, name, digest: d, size: int(o, 'size', 'PUT')!, offset: int(o, 'offset', 'PUT')! };
    }
    case 'GET': {
      const type = fileType(o, 'GET');
      const r: Request = { op, type, name: fileName(o, type, 'GET') };
      const offset = int(o, 'offset', 'GET', true);
      const length = int(o, 'length', 'GET', true);
      const window = int(o, 'window', 'GET', true);
      if (offset !== undefined) r.offset = offset;
      if (length !== undefined) r.length = length;
      if (window !== undefined) {
        if (window < 1 || window > MAX_GET_WINDOW) throw malformed(`GET: window must be 1 to ${MAX_GET_WINDOW}`);
        r.window = window;
      }
      return r;
    }
    case 'LIST': {
      const type = fileType(o, 'LIST');
      const r: Request = { op, type };
      const after = str(o, 'after', 'LIST', true);
      const limit = int(o, 'limit', 'LIST', true);
      if (after !== undefined) r.after = after;
      if (limit !== undefined) {
        if (limit < 1 || limit > MAX_LIST) throw malformed(`LIST: limit must be 1 to ${MAX_LIST}`);
        r.limit = limit;
      }
      return r;
    }
    case 'DELETE': {
      const type = fileType(o, 'DELETE');
      return { op, type, name: fileName(o, type, 'DELETE') };
    }
    case 'STAT': {
      if (o.type === undefined && o.name === undefined) return { op };
      const type = fileType(o, 'STAT');
      return { op, type, name: fileName(o, type, 'STAT') };
    }
    default:
      // Not String(op): a JSON object such as {"toString": 1} cannot be converted and would throw a TypeError.
      throw new HoldfastError('HF_PROTO_UNSUPPORTED', `unknown operation ${typeof op === 'string' ? JSON.stringify(op.slice(0, 40)) : `(a ${op === null ? 'null' : typeof op})`}`);
  }
}

/** Validates HELLO. */
export function parseHello(payload: Buffer): Hello {
  const o = parseJson(payload, 'HELLO');
  const versions = o.versions;
  if (!Array.isArray(versions) || versions.length === 0 || versions.length > 16 || !versions.every((v) => Number.isSafeInteger(v))) {
    throw malformed('HELLO: versions must list the protocol versions spoken');
  }
  const caps = o.capabilities ?? [];
  if (!Array.isArray(caps) || caps.length > 64 || !caps.every((c) => typeof c === 'string' && c.length <= 64)) {
    throw malformed('HELLO: capabilities must be a list of short strings');
  }
  const h: Hello = { versions: versions as number[], client: str(o, 'client', 'HELLO', true) ?? 'unknown', capabilities: caps as string[] };
  const mf = int(o, 'maxFrame', 'HELLO', true);
  if (mf !== undefined) h.maxFrame = mf;
  return h;
}

/** Validates an ERROR or GOAWAY payload (what the client receives). */
export function parseWireError(payload: Buffer): WireError {
  let o: Record<string, unknown>;
  try {
    o = parseJson(payload, 'ERROR');
  } catch {
    return { code: 'HF_PROTO_MALFORMED', message: 'the store sent an unreadable error', retryable: false };
  }
  const code = typeof o.code === 'string' && /^HF_[A-Z0-9_]{1,60}$/.test(o.code) ? o.code : 'HF_PROTO_MALFORMED';
  const message = typeof o.message === 'string' ? o.message.slice(0, 2000) : '(no message)';
  return { code, message, retryable: o.retryable === true };
}
