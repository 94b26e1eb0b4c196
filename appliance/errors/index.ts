/**
 * Coded errors. Every error Holdfast throws on purpose is a HoldfastError with
 * a stable `code`; messages may change, codes never. A message names the
 * object and the cause and says what the admin can do; the original error is
 * kept as `cause`.
 */

export const ErrorCodes = {
  HF_USAGE: 'the command line is wrong',
  HF_INVALID_ARGUMENT: 'a value given to Holdfast is not valid',
  HF_NO_PASSWORD: 'no passphrase or recovery key was given',
  HF_WRONG_PASSWORD: 'the passphrase does not open the repository',
  HF_BAD_RECOVERY_KEY: 'the recovery key is malformed or does not open the repository',
  HF_REPO_NOT_FOUND: 'there is no repository at the location',
  HF_REPO_EXISTS: 'a repository (or other data) already exists at the location',
  HF_REPO_LOCKED: 'another process holds a conflicting lock',
  HF_REPO_CORRUPT: 'a repository file (config, key, index, snapshot) is damaged',
  HF_UNSUPPORTED_VERSION: 'a format version newer than this program',
  HF_PACK_CORRUPT: 'a pack file is damaged',
  HF_BLOB_MISSING: 'a blob referenced by a snapshot is in no pack',
  HF_SNAPSHOT_NOT_FOUND: 'no snapshot matches',
  HF_PATH_NOT_FOUND: 'the path is not in the snapshot',
  HF_SOURCE_NOT_FOUND: 'a path to back up does not exist',
  HF_SOURCE_URL_INVALID: 'a source URL (smb://, sftp://) is malformed',
  HF_SOURCE_UNREACHABLE: 'the source server cannot be reached (host, port, firewall)',
  HF_SOURCE_AUTH_FAILED: 'the source server refused the user name, password or key',
  HF_SOURCE_SHARE_NOT_FOUND: 'the SMB share does not exist on the server (a missing path, on SMB or SFTP, is HF_SOURCE_NOT_FOUND)',
  HF_SOURCE_HOST_KEY_UNKNOWN: 'the SSH server\'s host key is not pinned (known_hosts or --host-key)',
  HF_SOURCE_HOST_KEY_CHANGED: 'the SSH server\'s host key differs from the pinned one',
  HF_SOURCE_DISCONNECTED: 'the source server dropped the connection and retries did not bring it back',
  HF_SOURCE_PROTOCOL: 'the source server sent something this client does not understand',
  HF_SOURCE_SNAPSHOT_NOT_FOUND: 'the share has no previous version at or before the requested time',
  HF_SMB_SIGNING_REQUIRED: 'the SMB server requires signing or encryption this client could not agree on',
  HF_DISK_FULL: 'the disk is full',
  HF_IO: 'an input/output error',
  HF_CHECK_FAILED: 'check found damage',
  HF_STORAGE_NOT_FOUND: 'a file is not in storage',
  HF_STORAGE_EXISTS: 'a file already exists in storage',
  HF_INTERRUPTED: 'the operation was interrupted',
  HF_NATIVE_UNAVAILABLE: 'the native addon is not built',
  HF_PKI_EXISTS: 'a CA or certificate file already exists and is not overwritten',
  HF_PKI_NOT_FOUND: 'a CA, certificate, key or CRL file is missing',
  HF_PKI_INVALID: 'a certificate name, option, file or peer identity is not valid',
  HF_PROTO_MALFORMED: 'a replication frame or message is malformed',
  HF_PROTO_FRAME_TOO_LARGE: 'a replication frame is larger than the agreed maximum',
  HF_PROTO_VERSION: 'the two ends share no replication protocol version',
  HF_PROTO_FLOW: 'a peer sent more data than its flow-control window allowed',
  HF_PROTO_STREAM: 'a frame names a stream that is not open, or too many streams are open',
  HF_PROTO_UNSUPPORTED: 'the operation is not supported by the peer',
  HF_PROTO_TIMEOUT: 'the peer did not answer in time',
  HF_STORE_NOT_FOUND: 'the file is not on the store',
  HF_STORE_DIGEST_MISMATCH: 'the uploaded bytes do not match the announced digest',
  HF_STORE_EXISTS: 'the store holds a different file under that name',
  HF_STORE_BAD_OFFSET: 'a resumed upload does not start where the store\'s partial file ends',
  HF_STORE_QUOTA_EXCEEDED: 'the tenant\'s quota on the store would be exceeded',
  HF_STORE_BUSY: 'another connection is uploading the same file to the store',
  HF_STORE_READ_ONLY: 'a store opened for reading was asked to write',
  HF_STORE_S3_ACCESS_DENIED: 'the S3 object store refused the store\'s credentials or an operation on the bucket',
  HF_STORE_S3_NO_BUCKET: 'the S3 bucket named for the store does not exist',
  HF_STORE_S3_UNAVAILABLE: 'the S3 object store cannot be reached or answered with a server error',
  HF_STORE_TENANT_NOT_FOUND: 'the store has no data for the tenant',
  HF_TLS_REFUSED: 'the TLS handshake failed (certificate unknown, expired, revoked or of the wrong kind)',
  HF_TARGET_NOT_FOUND: 'no replication target of that name',
  HF_TARGET_EXISTS: 'a replication target of that name already exists',
  HF_TARGET_UNREACHABLE: 'no endpoint of the target could be reached',
  HF_SOURCE_ACCESS_DENIED: 'the source server denies the backup user access to a path to back up',
  HF_UNAUTHENTICATED: 'the request carries no valid session: log in',
  HF_FORBIDDEN: 'the user\'s role does not allow the action',
  HF_CSRF: 'a state-changing request without the session\'s CSRF token (or from another site)',
  HF_ACCOUNT_LOCKED: 'too many wrong passwords: the account is locked for a while',
  HF_WRONG_CREDENTIALS: 'the user name or password is wrong',
  HF_SETUP_DONE: 'the appliance is already set up',
  HF_SETUP_NEEDED: 'the appliance is not set up yet: set the admin password first',
  HF_NOT_FOUND: 'no such object (source, schedule, job, user)',
  HF_CONFLICT: 'the object exists already, or is in use',
  HF_JOB_BUSY: 'a job of the same kind is already running for that subject',
  HF_UPDATE_LOCKED: 'jobs are running (or an update holds the lock): the update or reboot has to wait',
  HF_ENGINE_UNAVAILABLE: 'the engine does not answer on its socket',
  HF_ENROLL_TOKEN: 'the enrollment token is unknown, used already or expired: ask the vendor for a new one',
  HF_ENROLL_CSR: 'the certificate request is malformed or not signed by its own key',
  HF_FLEET_UNAUTHORIZED: 'the box has no valid fleet certificate, or it was revoked',
  HF_FLEET_UNREACHABLE: 'the fleet service cannot be reached, or answered with an error',
  HF_UPDATE_METADATA: 'the release channel\'s TUF metadata failed verification (signature, version, expiry or consistency)',
  HF_UPDATE_NOT_FOUND: 'the release is not among the signed targets of the channel',
  HF_UPDATE_VERIFY: 'a downloaded release does not match its signed length or hashes',
  HF_UPDATE_DOWNGRADE: 'the release is older than the installed one: updates never go backwards',
  HF_UPDATE_FAILED: 'the installed release did not pass its health check and was rolled back',
  HF_ESCROW_LOCKED: 'the configuration escrow does not open with this recovery key',
  HF_ESCROW_NOT_FOUND: 'the fleet holds no configuration escrow for the box',
  HF_WORKER_FAILED: 'a job\'s worker process ended without finishing the job (killed, out of memory, crashed)',
  HF_IMAGE_BUILD: 'building the appliance image failed (a build tool, the Debian mirror or the npm registry; the message names the step)',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class HoldfastError extends Error {
  readonly code: ErrorCode;

  /** Facts a program may act on (a host key's fingerprint, a lock's holder); never secrets. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options);
    this.name = 'HoldfastError';
    this.code = code;
    this.details = options?.details;
  }
}

/** True when err carries the code (HoldfastError or a native/system error). */
export function hasCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

export function errorCode(err: unknown): string | undefined {
  const c = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof c === 'string' ? c : undefined;
}

/**
 * Wraps a system error from storage or a source: ENOSPC becomes HF_DISK_FULL,
 * anything else HF_IO, with the object named in the message.
 */
export function ioError(what: string, err: unknown): HoldfastError {
  if (err instanceof HoldfastError) return err;
  const code = errorCode(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new HoldfastError('HF_DISK_FULL',
      `${what}: the disk is full. Free space (or run \`holdfast prune\`) and retry; data already stored is intact.`,
      { cause: err });
  }
  const detail = err instanceof Error ? err.message : String(err);
  return new HoldfastError('HF_IO', `${what}: ${detail}`, { cause: err });
}
