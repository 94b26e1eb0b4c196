/**
 * SMB2 wire constants and the 64-byte header (MS-SMB2 §2.2.1). Only what the
 * client uses; every number cites its section so a reader can check it.
 */

/** §2.2.1: ProtocolId of a plain SMB2 message. */
export const SMB2_MAGIC = 0x424d53fe; // 0xFE 'S' 'M' 'B', read as little-endian u32
/** §2.2.41: ProtocolId of a TRANSFORM_HEADER (encrypted message). */
export const TRANSFORM_MAGIC = 0x424d53fd;
export const HEADER_SIZE = 64;

/** §2.2.1.2 Command. */
export const Command = {
  NEGOTIATE: 0x0000,
  SESSION_SETUP: 0x0001,
  LOGOFF: 0x0002,
  TREE_CONNECT: 0x0003,
  TREE_DISCONNECT: 0x0004,
  CREATE: 0x0005,
  CLOSE: 0x0006,
  READ: 0x0008,
  IOCTL: 0x000b,
  CANCEL: 0x000c,
  ECHO: 0x000d,
  QUERY_DIRECTORY: 0x000e,
  QUERY_INFO: 0x0010,
} as const;

/** §2.2.1.2 Flags. */
export const HeaderFlag = {
  SERVER_TO_REDIR: 0x00000001,
  ASYNC_COMMAND: 0x00000002,
  SIGNED: 0x00000008,
} as const;

/** §2.2.3 Dialects this client offers, oldest first. */
export const Dialect = {
  SMB2_1: 0x0210,
  SMB3_0: 0x0300,
  SMB3_0_2: 0x0302,
  SMB3_1_1: 0x0311,
} as const;

/** §2.2.3 SecurityMode. */
export const SIGNING_ENABLED = 0x0001;
export const SIGNING_REQUIRED = 0x0002;

/** §2.2.3 Capabilities. */
export const Capability = {
  DFS: 0x00000001,
  LARGE_MTU: 0x00000004,
  ENCRYPTION: 0x00000040,
} as const;

/** §2.2.3.1 Negotiate context types. */
export const NegotiateContext = {
  PREAUTH_INTEGRITY: 0x0001,
  ENCRYPTION: 0x0002,
  SIGNING: 0x0008,
} as const;

/** §2.2.3.1.2 Ciphers, in the order this client prefers them (GCM is the fastest here). */
export const Cipher = {
  AES_128_CCM: 0x0001,
  AES_128_GCM: 0x0002,
  AES_256_CCM: 0x0003,
  AES_256_GCM: 0x0004,
} as const;
export const CIPHER_PREFERENCE = [Cipher.AES_128_GCM, Cipher.AES_256_GCM, Cipher.AES_128_CCM, Cipher.AES_256_CCM];

/** §2.2.3.1.7 Signing algorithms, preferred first. */
export const SigningAlgorithm = { HMAC_SHA256: 0x0000, AES_CMAC: 0x0001, AES_GMAC: 0x0002 } as const;
export const SIGNING_PREFERENCE = [SigningAlgorithm.AES_GMAC, SigningAlgorithm.AES_CMAC];

/** §2.2.6 SessionFlags. */
export const SESSION_FLAG_IS_GUEST = 0x0001;
export const SESSION_FLAG_IS_NULL = 0x0002;
export const SESSION_FLAG_ENCRYPT_DATA = 0x0004;

/** §2.2.10 ShareFlags. */
export const SHARE_FLAG_ENCRYPT_DATA = 0x00008000;
export const SHARE_TYPE_DISK = 0x01;

/** §2.2.13 CREATE fields. */
export const Access = {
  FILE_READ_DATA: 0x00000001, // FILE_LIST_DIRECTORY on a directory
  FILE_READ_EA: 0x00000008,
  FILE_READ_ATTRIBUTES: 0x00000080,
  READ_CONTROL: 0x00020000,
  SYNCHRONIZE: 0x00100000,
} as const;
export const ShareAccess = { READ: 0x1, WRITE: 0x2, DELETE: 0x4 } as const;
export const FILE_OPEN = 0x00000001;
export const CreateOption = {
  DIRECTORY_FILE: 0x00000001,
  SEQUENTIAL_ONLY: 0x00000004,
  NON_DIRECTORY_FILE: 0x00000040,
  OPEN_REPARSE_POINT: 0x00200000,
} as const;
export const IMPERSONATION = 0x00000002;

/** MS-FSCC §2.6 File attributes. */
export const Attr = {
  READONLY: 0x0001,
  HIDDEN: 0x0002,
  SYSTEM: 0x0004,
  DIRECTORY: 0x0010,
  ARCHIVE: 0x0020,
  REPARSE_POINT: 0x0400,
} as const;

/** MS-FSCC §2.4 information classes used here. */
export const InfoClass = {
  FileIdFullDirectoryInformation: 0x26,
  FileInternalInformation: 6,
  FileNetworkOpenInformation: 34,
} as const;
export const INFO_TYPE_FILE = 0x01;

/** MS-FSCC §2.3 FSCTLs. */
export const FSCTL_SRV_ENUMERATE_SNAPSHOTS = 0x00144064;
export const FSCTL_GET_REPARSE_POINT = 0x000900a8;
export const IOCTL_IS_FSCTL = 0x00000001;

/** MS-FSCC §2.1.2.1 reparse tags. */
export const IO_REPARSE_TAG_SYMLINK = 0xa000000c;

/** MS-SMB2 §2.2.13.2.7 the TWrp create context: open the file as of a previous version. */
export const CREATE_CONTEXT_TIMEWARP = Buffer.from('TWrp', 'latin1');

/** MS-ERREF NTSTATUS values this client tells apart. */
export const Status = {
  SUCCESS: 0x00000000,
  PENDING: 0x00000103,
  BUFFER_OVERFLOW: 0x80000005,
  NO_MORE_FILES: 0x80000006,
  STOPPED_ON_SYMLINK: 0x8000002d,
  INVALID_PARAMETER: 0xc000000d,
  NO_SUCH_FILE: 0xc000000f,
  END_OF_FILE: 0xc0000011,
  MORE_PROCESSING_REQUIRED: 0xc0000016,
  ACCESS_DENIED: 0xc0000022,
  OBJECT_NAME_INVALID: 0xc0000033,
  OBJECT_NAME_NOT_FOUND: 0xc0000034,
  OBJECT_PATH_INVALID: 0xc0000039,
  OBJECT_PATH_NOT_FOUND: 0xc000003a,
  SHARING_VIOLATION: 0xc0000043,
  FILE_LOCK_CONFLICT: 0xc0000054,
  LOCK_NOT_GRANTED: 0xc0000055,
  DELETE_PENDING: 0xc0000056,
  PRIVILEGE_NOT_HELD: 0xc0000061,
  NO_SUCH_USER: 0xc0000064,
  WRONG_PASSWORD: 0xc000006a,
  LOGON_FAILURE: 0xc000006d,
  ACCOUNT_RESTRICTION: 0xc000006e,
  PASSWORD_EXPIRED: 0xc0000071,
  ACCOUNT_DISABLED: 0xc0000072,
  INSUFFICIENT_RESOURCES: 0xc000009a,
  FILE_IS_A_DIRECTORY: 0xc00000ba,
  NOT_SUPPORTED: 0xc00000bb,
  NETWORK_NAME_DELETED: 0xc00000c9,
  BAD_NETWORK_NAME: 0xc00000cc,
  NOT_A_DIRECTORY: 0xc0000103,
  NAME_TOO_LONG: 0xc0000106,
  FILE_CLOSED: 0xc0000128,
  USER_SESSION_DELETED: 0xc0000203,
  ACCOUNT_LOCKED_OUT: 0xc0000234,
  NOT_A_REPARSE_POINT: 0xc0000275,
  NETWORK_SESSION_EXPIRED: 0xc000035c,
} as const;

const STATUS_NAMES = new Map<number, string>(Object.entries(Status).map(([k, v]) => [v, `STATUS_${k}`]));

export function statusName(status: number): string {
  return STATUS_NAMES.get(status) ?? `NTSTATUS 0x${status.toString(16).padStart(8, '0')}`;
}

/** The errno-style code a per-path failure gets, so the backup pipeline can word its warning. */
export function statusErrno(status: number): string {
  switch (status) {
    case Status.NO_SUCH_FILE:
    case Status.OBJECT_NAME_NOT_FOUND:
    case Status.OBJECT_PATH_NOT_FOUND:
    case Status.DELETE_PENDING:
      return 'ENOENT';
    case Status.ACCESS_DENIED:
    case Status.PRIVILEGE_NOT_HELD:
      return 'EACCES';
    case Status.NOT_A_DIRECTORY:
      return 'ENOTDIR';
    case Status.FILE_IS_A_DIRECTORY:
      return 'EISDIR';
    case Status.SHARING_VIOLATION:
    case Status.FILE_LOCK_CONFLICT:
    case Status.LOCK_NOT_GRANTED:
      return 'EBUSY';
    case Status.STOPPED_ON_SYMLINK:
      return 'ELOOP';
    case Status.NAME_TOO_LONG:
      return 'ENAMETOOLONG';
    case Status.OBJECT_NAME_INVALID:
    case Status.OBJECT_PATH_INVALID:
      return 'EILSEQ'; // a name the server lists but will not open (Windows-illegal characters)
    default:
      return 'EIO';
  }
}

/** Statuses after which the session or tree is gone: reconnect and retry. */
export function statusIsSessionLoss(status: number): boolean {
  return status === Status.NETWORK_NAME_DELETED || status === Status.USER_SESSION_DELETED ||
    status === Status.NETWORK_SESSION_EXPIRED;
}

/** Statuses that mean the credentials were refused. */
export function statusIsLogonFailure(status: number): boolean {
  return status === Status.LOGON_FAILURE || status === Status.WRONG_PASSWORD || status === Status.NO_SUCH_USER ||
    status === Status.ACCOUNT_DISABLED || status === Status.ACCOUNT_LOCKED_OUT || status === Status.PASSWORD_EXPIRED ||
    status === Status.ACCOUNT_RESTRICTION;
}

/** The fields of a header this client reads. */
export interface Smb2Header {
  creditCharge: number;
  status: number;
  command: number;
  credits: number;
  flags: number;
  nextCommand: number;
  messageId: bigint;
  asyncId: bigint;
  treeId: number;
  sessionId: bigint;
}

/** Parses the header at the start of msg; the caller has checked msg.length >= 64 and the magic. */
export function readHeader(msg: Buffer): Smb2Header {
  const flags = msg.readUInt32LE(16);
  const async = (flags & HeaderFlag.ASYNC_COMMAND) !== 0;
  return {
    creditCharge: msg.readUInt16LE(6),
    status: msg.readUInt32LE(8),
    command: msg.readUInt16LE(12),
    credits: msg.readUInt16LE(14),
    flags,
    nextCommand: msg.readUInt32LE(20),
    messageId: msg.readBigUInt64LE(24),
    asyncId: async ? msg.readBigUInt64LE(32) : 0n,
    treeId: async ? 0 : msg.readUInt32LE(36),
    sessionId: msg.readBigUInt64LE(40),
  };
}

/** Fields of a request header. */
export interface RequestHeader {
  command: number;
  creditCharge: number;
  creditRequest: number;
  messageId: bigint;
  treeId: number;
  sessionId: bigint;
}

/** Writes a synchronous request header (§2.2.1.2) into the first 64 bytes of msg. */
export function writeHeader(msg: Buffer, h: RequestHeader): void {
  msg.writeUInt32LE(SMB2_MAGIC, 0);
  msg.writeUInt16LE(HEADER_SIZE, 4);
  msg.writeUInt16LE(h.creditCharge, 6);
  msg.writeUInt32LE(0, 8); // ChannelSequence/Reserved
  msg.writeUInt16LE(h.command, 12);
  msg.writeUInt16LE(h.creditRequest, 14);
  msg.writeUInt32LE(0, 16); // Flags (SIGNED is set by the signer)
  msg.writeUInt32LE(0, 20); // NextCommand
  msg.writeBigUInt64LE(h.messageId, 24);
  msg.writeUInt32LE(0, 32); // Reserved (ProcessId)
  msg.writeUInt32LE(h.treeId, 36);
  msg.writeBigUInt64LE(h.sessionId, 40);
  msg.fill(0, 48, 64);
}

/** FILETIME (100 ns since 1601) to [seconds, nanoseconds] since 1970. */
export function filetimeToTimespec(ft: bigint): [number, number] {
  const ns100 = ft - 116444736000000000n;
  let sec = ns100 / 10_000_000n;
  let rem = ns100 % 10_000_000n;
  if (rem < 0n) {
    rem += 10_000_000n;
    sec -= 1n;
  }
  return [Number(sec), Number(rem) * 100];
}

/** [seconds, nanoseconds] since 1970 to FILETIME. */
export function timespecToFiletime(sec: number, nsec: number): bigint {
  return BigInt(sec) * 10_000_000n + BigInt(Math.floor(nsec / 100)) + 116444736000000000n;
}
