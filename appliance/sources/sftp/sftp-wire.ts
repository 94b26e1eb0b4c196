/**
 * SFTP version 3 (draft-ietf-secsh-filexfer-02, what OpenSSH speaks): the
 * packet types, status codes and file attributes this client uses, and a
 * bounds-checked reader for packet bodies. Names and paths are raw bytes.
 */

import { HoldfastError } from '../../errors/index.ts';

export const SFTP_VERSION = 3;

export const PacketType = {
  INIT: 1,
  VERSION: 2,
  OPEN: 3,
  CLOSE: 4,
  READ: 5,
  LSTAT: 7,
  FSTAT: 8,
  OPENDIR: 11,
  READDIR: 12,
  READLINK: 19,
  STATUS: 101,
  HANDLE: 102,
  DATA: 103,
  NAME: 104,
  ATTRS: 105,
  EXTENDED: 200,
  EXTENDED_REPLY: 201,
} as const;

export const Status = {
  OK: 0,
  EOF: 1,
  NO_SUCH_FILE: 2,
  PERMISSION_DENIED: 3,
  FAILURE: 4,
  BAD_MESSAGE: 5,
  NO_CONNECTION: 6,
  CONNECTION_LOST: 7,
  OP_UNSUPPORTED: 8,
} as const;

/** SSH_FXF_READ: the only open flag a backup needs. */
export const OPEN_READ = 0x1;

const ATTR_SIZE = 0x1;
const ATTR_UIDGID = 0x2;
const ATTR_PERMISSIONS = 0x4;
const ATTR_ACMODTIME = 0x8;
const ATTR_EXTENDED = 0x80000000;

/**
 * File attributes as SFTP v3 carries them: whole seconds, no inode, device
 * or link count. A field the server left out is null.
 */
export interface SftpAttrs {
  size: number | null;
  uid: number | null;
  gid: number | null;
  /** Full st_mode, type bits included. */
  mode: number | null;
  atime: number | null;
  mtime: number | null;
}

/** One directory entry from READDIR. */
export interface SftpName {
  name: Buffer;
  attrs: SftpAttrs;
}

/** A STATUS reply, read without making an Error (OK and EOF are common). */
export interface StatusReply {
  status: number;
  message: string;
}

/** A STATUS reply other than OK (and EOF where EOF is expected). */
export class SftpStatusError extends Error {
  readonly status: number;
  readonly serverMessage: string;

  constructor(status: number, serverMessage: string) {
    super(`SFTP status ${STATUS_NAMES[status] ?? status}${serverMessage ? `: ${serverMessage}` : ''}`);
    this.name = 'SftpStatusError';
    this.status = status;
    this.serverMessage = serverMessage;
  }
}

const STATUS_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k]));

/** Thrown for a malformed packet; the connection is then unusable. */
export function protocolError(what: string): HoldfastError {
  return new HoldfastError('HF_SOURCE_PROTOCOL', `the SFTP server sent a malformed packet (${what}); this client cannot go on with this connection`);
}

/** Reads the fields of one packet body, failing with HF_SOURCE_PROTOCOL past its end. */
export class WireReader {
  readonly #buf: Buffer;
  #pos: number;

  constructor(buf: Buffer, pos = 0) {
    this.#buf = buf;
    this.#pos = pos;
  }

  get remaining(): number {
    return this.#buf.length - this.#pos;
  }

  u32(): number {
    if (this.remaining < 4) throw protocolError('truncated uint32');
    const v = this.#buf.readUInt32BE(this.#pos);
    this.#pos += 4;
    return v;
  }

  u64(): number {
    const hi = this.u32();
    const lo = this.u32();
    return hi * 0x1_0000_0000 + lo;
  }

  /** A string field as bytes (a copy: the packet buffer is not kept). */
  bytes(): Buffer {
    const n = this.u32();
    if (this.remaining < n) throw protocolError('truncated string');
    const out = Buffer.from(this.#buf.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return out;
  }

  string(): string {
    return this.bytes().toString('utf8');
  }

  attrs(): SftpAttrs {
    const flags = this.u32();
    const a: SftpAttrs = { size: null, uid: null, gid: null, mode: null, atime: null, mtime: null };
    if (flags & ATTR_SIZE) a.size = this.u64();
    if (flags & ATTR_UIDGID) {
      a.uid = this.u32();
      a.gid = this.u32();
    }
    if (flags & ATTR_PERMISSIONS) a.mode = this.u32();
    if (flags & ATTR_ACMODTIME) {
      a.atime = this.u32();
      a.mtime = this.u32();
    }
    if (flags & ATTR_EXTENDED) {
      for (let n = this.u32(); n > 0; n--) {
        this.bytes();
        this.bytes();
      }
    }
    return a;
  }
}

/** Writes one request packet: length, type, request id, then the fields. */
export function encodeRequest(type: number, id: number, fields: readonly (Buffer | number | bigint)[]): Buffer {
  let len = 1 + 4;
  for (const f of fields) len += typeof f === 'number' ? 4 : typeof f === 'bigint' ? 8 : 4 + f.length;
  const out = Buffer.allocUnsafe(4 + len);
  out.writeUInt32BE(len, 0);
  out[4] = type;
  out.writeUInt32BE(id, 5);
  let p = 9;
  for (const f of fields) {
    if (typeof f === 'number') {
      out.writeUInt32BE(f, p);
      p += 4;
    } else if (typeof f === 'bigint') {
      out.writeBigUInt64BE(f, p);
      p += 8;
    } else {
      out.writeUInt32BE(f.length, p);
      f.copy(out, p + 4);
      p += 4 + f.length;
    }
  }
  return out;
}
