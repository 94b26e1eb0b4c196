import { isUtf8 } from 'node:buffer';

import { HoldfastError } from '../errors/index.ts';
import { type BlobId, isId } from '../repository/index.ts';

export type NodeType = 'file' | 'dir' | 'symlink' | 'fifo' | 'chardev' | 'blockdev' | 'socket';
const NODE_TYPES = new Set<NodeType>(['file', 'dir', 'symlink', 'fifo', 'chardev', 'blockdev', 'socket']);

/** Seconds and nanoseconds since the epoch. */
export type Timespec = readonly [number, number];

/**
 * One entry of a directory listing. Names and symlink targets are raw bytes:
 * the source's names are recorded exactly, whatever their encoding.
 */
export interface TreeNode {
  name: Buffer;
  type: NodeType;
  /** Permission bits, including setuid/setgid/sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtime: Timespec;
  ctime: Timespec;
  /** Bytes (files); 0 for other types. */
  size: number;
  inode: number;
  device: number;
  links: number;
  /** Files: the data blobs, in order. */
  content?: BlobId[];
  /** Directories: the tree blob of the listing. */
  subtree?: BlobId;
  /** Symlinks: the target, verbatim. */
  target?: Buffer;
  /** Character and block devices. */
  rdev?: number;
  /** Creation time, from sources that have one (SMB). */
  btime?: Timespec;
  /** Windows file attributes (MS-FSCC §2.6), from SMB sources. */
  attributes?: number;
}

/** The tree blob of an empty directory listing. */
export const EMPTY_TREE_JSON = '{"nodes":[]}';

function encodeBytes(key: string, b: Buffer): string {
  return isUtf8(b) ? `"${key}":${JSON.stringify(b.toString('utf8'))}` : `"${key}B64":"${b.toString('base64')}"`;
}

/**
 * Writes a tree blob node by node, in name order, into one growing buffer:
 * the canonical JSON of encodeTree, so a walk can hand each node over as
 * soon as it has it and keep none (a directory of many thousand entries is
 * then held as its encoded bytes, not as objects, and never as one string).
 */
export class TreeEncoder {
  #buf: Buffer;
  #len = 0;
  #count = 0;
  #last: Buffer | null = null;

  /** expected: the number of nodes likely to come (sizes the first buffer). */
  constructor(expected = 0) {
    this.#buf = Buffer.allocUnsafe(Math.max(64, expected * 320));
    this.#put('{"nodes":[');
  }

  get count(): number {
    return this.#count;
  }

  /** Appends a node; its name MUST sort after the previous one's (HF_INVALID_ARGUMENT: a duplicate, or out of order). */
  add(n: TreeNode): void {
    if (this.#last) {
      const c = Buffer.compare(this.#last, n.name);
      if (c === 0) throw new HoldfastError('HF_INVALID_ARGUMENT', `duplicate name ${JSON.stringify(n.name.toString())} in a tree`);
      if (c > 0) throw new HoldfastError('HF_INVALID_ARGUMENT', `name ${JSON.stringify(n.name.toString())} out of order in a tree`);
    }
    let s = `${this.#count > 0 ? ',' : ''}{${encodeBytes('name', n.name)},"type":"${n.type}","mode":${n.mode},"uid":${n.uid},"gid":${n.gid}` +
      `,"mtime":[${n.mtime[0]},${n.mtime[1]}],"ctime":[${n.ctime[0]},${n.ctime[1]}]` +
      `,"size":${n.size},"inode":${n.inode},"device":${n.device},"links":${n.links}`;
    if (n.content) s += `,"content":[${n.content.map((c) => `"${c}"`).join(',')}]`;
    if (n.subtree) s += `,"subtree":"${n.subtree}"`;
    if (n.target) s += `,${encodeBytes('target', n.target)}`;
    if (n.rdev !== undefined) s += `,"rdev":${n.rdev}`;
    if (n.btime !== undefined) s += `,"btime":[${n.btime[0]},${n.btime[1]}]`;
    if (n.attributes !== undefined) s += `,"attrs":${n.attributes}`;
    this.#put(`${s}}`);
    this.#last = n.name;
    this.#count++;
  }

  /** The tree blob's bytes (the encoder is done). */
  finish(): Buffer {
    this.#put(']}');
    return this.#buf.subarray(0, this.#len);
  }

  #put(str: string): void {
    const room = str.length * 3; // UTF-8 bytes of a JavaScript string are at most 3 per code unit
    if (this.#len + room > this.#buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#len + room));
      this.#buf.copy(bigger, 0, 0, this.#len);
      this.#buf = bigger;
    }
    this.#len += this.#buf.write(str, this.#len, 'utf8');
  }
}

/**
 * Canonical JSON of a listing: nodes sorted by name bytes, fixed key order, so
 * an unchanged directory always yields the same bytes and the same blob id.
 * Names that are not valid UTF-8 are stored as nameB64 (likewise targetB64).
 * Duplicate names are HF_INVALID_ARGUMENT.
 */
export function encodeTree(nodes: readonly TreeNode[]): Buffer {
  const sorted = [...nodes].sort((a, b) => Buffer.compare(a.name, b.name));
  const e = new TreeEncoder(sorted.length);
  for (const n of sorted) e.add(n);
  return e.finish();
}

const isInt = (v: unknown): v is number => Number.isSafeInteger(v);
const isTime = (v: unknown): v is Timespec =>
  Array.isArray(v) && v.length === 2 && isInt(v[0]) && isInt(v[1]) && v[1] >= 0 && v[1] < 1e9;

/** Parses and type-checks a tree blob; HF_REPO_CORRUPT names the tree otherwise. */
export function decodeTree(bytes: Buffer, what: string): TreeNode[] {
  const bad = (why: string) => new HoldfastError('HF_REPO_CORRUPT', `${what}: ${why}; run \`holdfast check\``);
  let doc: { nodes?: unknown };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as { nodes?: unknown };
  } catch {
    throw bad('not valid JSON');
  }
  if (!Array.isArray(doc?.nodes)) throw bad('no node list');
  return doc.nodes.map((raw: Record<string, unknown>, i: number) => {
    const name = typeof raw.name === 'string' ? Buffer.from(raw.name, 'utf8')
      : typeof raw.nameB64 === 'string' ? Buffer.from(raw.nameB64, 'base64') : null;
    if (!name) throw bad(`node ${i} has no name`);
    const type = raw.type as NodeType;
    if (!NODE_TYPES.has(type)) throw bad(`node ${i} has unknown type ${JSON.stringify(raw.type)}`);
    if (!isInt(raw.mode) || !isInt(raw.uid) || !isInt(raw.gid) || !isTime(raw.mtime) || !isTime(raw.ctime) ||
        !isInt(raw.size) || !isInt(raw.inode) || !isInt(raw.device) || !isInt(raw.links)) {
      throw bad(`node ${i} has missing or invalid metadata`);
    }
    const node: TreeNode = {
      name, type, mode: raw.mode, uid: raw.uid, gid: raw.gid, mtime: raw.mtime, ctime: raw.ctime,
      size: raw.size, inode: raw.inode, device: raw.device, links: raw.links,
    };
    if (type === 'file') {
      if (!Array.isArray(raw.content) || !raw.content.every((c) => typeof c === 'string' && isId(c))) {
        throw bad(`file node ${i} has an invalid content list`);
      }
      node.content = raw.content as BlobId[];
    }
    if (type === 'dir') {
      if (typeof raw.subtree !== 'string' || !isId(raw.subtree)) throw bad(`directory node ${i} has no subtree`);
      node.subtree = raw.subtree as BlobId;
    }
    if (type === 'symlink') {
      const t = typeof raw.target === 'string' ? Buffer.from(raw.target, 'utf8')
        : typeof raw.targetB64 === 'string' ? Buffer.from(raw.targetB64, 'base64') : null;
      if (!t) throw bad(`symlink node ${i} has no target`);
      node.target = t;
    }
    if (type === 'chardev' || type === 'blockdev') {
      if (!isInt(raw.rdev)) throw bad(`device node ${i} has no rdev`);
      node.rdev = raw.rdev;
    }
    if (raw.btime !== undefined) {
      if (!isTime(raw.btime)) throw bad(`node ${i} has an invalid btime`);
      node.btime = raw.btime;
    }
    if (raw.attrs !== undefined) {
      if (!isInt(raw.attrs)) throw bad(`node ${i} has invalid attrs`);
      node.attributes = raw.attrs;
    }
    return node;
  });
}

/**
 * Whether a name may be created inside a directory: not empty, not . or ..,
 * no slash, no NUL. Trees from a damaged or hostile repository may hold
 * anything; restore and ls check every name with this.
 */
export function isSafeName(name: Buffer): boolean {
  if (name.length === 0) return false;
  if (name.includes(0x2f) || name.includes(0)) return false;
  return !(name.length === 1 && name[0] === 0x2e) && !(name.length === 2 && name[0] === 0x2e && name[1] === 0x2e);
}

/** A name for people: UTF-8 where valid, with invalid bytes shown as \xNN. */
export function displayName(name: Buffer): string {
  if (isUtf8(name)) return name.toString('utf8');
  let out = '';
  for (const b of name) out += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return out;
}

/** Whether two nodes record the same thing (for reusing a parent's tree). */
export function sameNode(a: TreeNode, b: TreeNode): boolean {
  return a.type === b.type && a.name.equals(b.name) && a.mode === b.mode && a.uid === b.uid && a.gid === b.gid &&
    a.mtime[0] === b.mtime[0] && a.mtime[1] === b.mtime[1] && a.ctime[0] === b.ctime[0] && a.ctime[1] === b.ctime[1] &&
    a.size === b.size && a.inode === b.inode && a.device === b.device && a.links === b.links &&
    a.subtree === b.subtree && a.rdev === b.rdev && a.attributes === b.attributes &&
    a.btime?.[0] === b.btime?.[0] && a.btime?.[1] === b.btime?.[1] &&
    (a.target === b.target || (a.target !== undefined && b.target !== undefined && a.target.equals(b.target))) &&
    (a.content === b.content || (a.content !== undefined && b.content !== undefined &&
      a.content.length === b.content.length && a.content.every((c, i) => c === b.content![i])));
}
