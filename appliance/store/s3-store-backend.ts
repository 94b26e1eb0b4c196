import { createHash, randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  UploadPartCommand,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

import { Hasher, sha256 } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { type ReplicatedType, contentAddressed } from '../protocol/index.ts';
import { filePath, validName } from '../storage/index.ts';
import { TRASH_ENTRY, assertTenant } from './fs-store-backend.ts';
import type { StoreBackend, StoredFile, TenantUsage, TrashEntry, Upload } from './store-backend.ts';

const HEX64 = /^[0-9a-f]{64}$/;
const TYPE_DIRS: Record<ReplicatedType, string> = { config: '', key: 'keys/', pack: 'data/', index: 'index/', snapshot: 'snapshots/' };
const OWNER = `${os.hostname().replace(/[^A-Za-z0-9-]/g, '_').slice(0, 64) || 'host'}.${process.pid}.${randomBytes(4).toString('hex')}`;
/** S3's floor for every part but the last. */
const MIN_PART = 5 << 20;
const MAX_PARTS = 10_000;
/** Received bytes wait for S3 in slabs of this size (parts are whole slabs). */
const SLAB = 1 << 20;
/** Bytes of a streamed PUT that may wait for the object store before a write waits. */
const STREAM_AHEAD = 4 << 20;
/** Free slabs a backend keeps for the next uploads (256 MiB at most). */
const SLABS_KEPT = 256;

/**
 * Slabs reused from one upload to the next. Fresh buffers of tens of MiB
 * cost page faults and garbage collections on every part; these stay warm.
 * A slab goes back only once nothing (hasher, socket, retry) reads it.
 */
class SlabPool {
  readonly #free: Buffer[] = [];
  /** Slabs taken and not given back: a slab given twice would be filled by two uploads at once. */
  readonly #out = new Set<Buffer>();

  take(): Buffer {
    const s = this.#free.pop() ?? Buffer.allocUnsafeSlow(SLAB);
    this.#out.add(s);
    return s;
  }

  give(slabs: readonly Buffer[]): void {
    for (const s of slabs) {
      if (!this.#out.delete(s)) throw new Error('a slab was given back twice');
      if (this.#free.length < SLABS_KEPT) this.#free.push(s);
    }
  }
}

/** Bytes taken off an upload's slabs: what to send (views) and the slabs to give back after. */
interface Chunk {
  views: Buffer[];
  slabs: Buffer[];
  size: number;
}

/**
 * A request body made of slabs: the HTTP handler streams it (afresh on each
 * attempt the SDK makes), so a part is never concatenated into one buffer.
 */
class SlabBody {
  readonly views: readonly Buffer[];

  constructor(views: readonly Buffer[]) {
    this.views = views;
  }

  stream(): Readable {
    return Readable.from(this.views, { objectMode: false });
  }
}

/** NodeHttpHandler that sends a SlabBody as a stream made for this attempt. */
class SlabHttpHandler extends NodeHttpHandler {
  override handle(...[request, options]: Parameters<NodeHttpHandler['handle']>): ReturnType<NodeHttpHandler['handle']> {
    const body: unknown = request.body;
    if (body instanceof SlabBody) {
      request = Object.assign(Object.create(Object.getPrototypeOf(request) as object) as typeof request, request, { body: body.stream() });
    }
    return super.handle(request, options);
  }
}

export interface S3StoreOptions {
  /** http(s)://host:port of the S3 API; omitted: AWS S3 of the region. */
  endpoint?: string;
  bucket: string;
  region?: string;
  /** Bucket in the path (Ceph RGW, MinIO), not in the host name. */
  pathStyle?: boolean;
  /** Key prefix under which the store keeps everything ('' or ending in /). */
  prefix?: string;
  /** Default: the SDK's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, …). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** The store's grace period: what Object Lock retention covers. */
  graceSeconds: number;
  /** COMPLIANCE (default): no credential can shorten or bypass it; GOVERNANCE: a principal with s3:BypassGovernanceRetention can. */
  lockMode?: 'COMPLIANCE' | 'GOVERNANCE';
  /** Files up to this size are sent in one PUT at commit (default 32 MiB). */
  singlePutMax?: number;
  /** Part size of multipart uploads (default 16 MiB; a whole number of MiB, at least 5). */
  partSize?: number;
  /** How long an upload's claim lasts without renewal (default 15 s; renewed every third of it). */
  leaseSeconds?: number;
  /** How long a usage figure is reused before the tenant is listed again (default 60 s). */
  usageTtlSeconds?: number;
}

/** One part of a multipart upload as the state object records it. */
interface PartRecord {
  n: number;
  size: number;
  etag: string;
  /** SHA-256 state after this part (base64 of Hasher.state()). */
  hash: string;
}

/** The state object of an upload in progress (tenants/<t>/partial/<type>-<name>-<digest>). */
interface UploadState {
  v: 1;
  uploadId: string;
  key: string;
  partSize: number;
  parts: PartRecord[];
}

type Retention = { ObjectLockMode?: 'COMPLIANCE' | 'GOVERNANCE'; ObjectLockRetainUntilDate?: Date };

interface Lease {
  readonly lost: () => boolean;
  release(): Promise<void>;
}

/** The lease of an upload that needs no claim (one conditional PUT, nothing shared until then). */
const NO_CLAIM: Lease = { lost: () => false, release: async () => undefined };

/** What the bucket can do, found at start-up. */
export interface S3BucketInfo {
  objectLock: boolean;
  versioned: boolean;
  /**
   * The object store refuses a PUT whose body does not hash to its SigV4
   * payload hash (x-amz-content-sha256): a one-PUT file is then sent under
   * the announced digest and checked by the object store, not hashed here.
   */
  payloadChecked: boolean;
}

/** Errors S3 answers a body that does not hash to x-amz-content-sha256 with. */
const PAYLOAD_MISMATCH = new Set(['XAmzContentSHA256Mismatch', 'BadDigest']);

/** A conditional write refused: If-None-Match found the object there. */
function preconditionFailed(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === 'PreconditionFailed' || e.$metadata?.httpStatusCode === 412;
}

/**
 * A store's files in a bucket of an S3-compatible object store (Ceph RGW,
 * AWS S3, MinIO, Backblaze B2, Wasabi). The front-end keeps nothing of its
 * own: every fact another front-end needs lives in the bucket.
 *
 *   <prefix>tenants/<t>/<layout>              a repository's layout (config, keys/, data/xx/, index/, snapshots/)
 *   <prefix>tenants/<t>/partial/<type>-<name>-<digest>          upload state (JSON): multipart upload id, parts, hash state
 *   <prefix>tenants/<t>/partial/<type>-<name>-<digest>.lock.<g> the claim of the front-end uploading it (generation g)
 *   <prefix>tenants/<t>/trash/<ms>-<random>-<type>-<name>       deleted files (tombstones carry their time in the key)
 *
 * Files up to singlePutMax are buffered and sent in one PUT when committed;
 * larger ones go as a multipart upload on their final key, which S3 keeps
 * invisible until completed. After each part the SHA-256 state is saved in
 * the upload's state object, so a front-end resuming an upload another one
 * began (S3 cannot read the parts of an incomplete upload) continues the
 * digest from there; the digest is checked before the upload is completed,
 * that is, before the object exists.
 *
 * With Object Lock on the bucket every file and tombstone gets a retention
 * (COMPLIANCE by default) until it was written + the grace period, so that
 * not even these credentials can destroy a copy inside that time.
 */
export class S3StoreBackend implements StoreBackend {
  readonly location: string;
  readonly client: S3Client;
  readonly #o: Required<Omit<S3StoreOptions, 'endpoint' | 'credentials' | 'region'>> & { region: string };
  #info: S3BucketInfo = { objectLock: false, versioned: false, payloadChecked: false };
  readonly #usage = new Map<string, { at: number; usage: TenantUsage }>();

  constructor(o: S3StoreOptions) {
    const prefix = o.prefix ?? '';
    if (prefix !== '' && !/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*\/$/.test(prefix)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `invalid S3 key prefix ${JSON.stringify(prefix)} (letters, digits, . _ - and /, ending in /)`);
    }
    const partSize = o.partSize ?? 16 << 20;
    if (!Number.isSafeInteger(partSize) || partSize < MIN_PART) throw new HoldfastError('HF_INVALID_ARGUMENT', `S3 part size ${partSize} bytes (--s3-part-size) is below S3's 5 MiB`);
    if (partSize % SLAB !== 0) throw new HoldfastError('HF_INVALID_ARGUMENT', `S3 part size ${partSize} bytes (--s3-part-size) is not a whole number of MiB; give e.g. 16MiB`);
    this.#o = {
      bucket: o.bucket,
      region: o.region ?? 'us-east-1',
      pathStyle: o.pathStyle ?? false,
      prefix,
      graceSeconds: o.graceSeconds,
      lockMode: o.lockMode ?? 'COMPLIANCE',
      singlePutMax: o.singlePutMax ?? 32 << 20,
      partSize,
      leaseSeconds: o.leaseSeconds ?? 15,
      usageTtlSeconds: o.usageTtlSeconds ?? 60,
    };
    this.location = `s3://${o.bucket}/${prefix}${o.endpoint ? ` at ${o.endpoint}` : ''}`;
    this.client = new S3Client({
      ...(o.endpoint ? { endpoint: o.endpoint } : {}),
      region: this.#o.region,
      forcePathStyle: this.#o.pathStyle,
      ...(o.credentials ? { credentials: o.credentials } : {}),
      // The store verifies SHA-256 digests of whole files itself; the SDK's
      // newer default checksums (aws-chunked CRC32) are not understood by
      // every S3-compatible server (Ceph Pacific among them).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 4,
      requestHandler: new SlabHttpHandler({ connectionTimeout: 10_000, requestTimeout: 120_000, httpAgent: { keepAlive: true, maxSockets: 64 }, httpsAgent: { keepAlive: true, maxSockets: 64 } }),
    });
  }

  get info(): S3BucketInfo {
    return this.#info;
  }

  /**
   * Checks that the bucket is there and reachable, whether it has Object Lock
   * (and so versioning), and whether the object store checks payload hashes.
   */
  async initialize(): Promise<S3BucketInfo> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.#o.bucket }));
    } catch (err) {
      // HEAD has no body: a missing bucket is a bare 404
      throw this.#error('open', S3StoreBackend.#notFound(err) ? Object.assign(err as object, { name: 'NoSuchBucket' }) : err);
    }
    let objectLock = false;
    try {
      const r = await this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.#o.bucket }));
      objectLock = r.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled';
    } catch (err) {
      const name = (err as { name?: string }).name ?? '';
      if (!/ObjectLockConfigurationNotFound|NotImplemented|InvalidRequest|MethodNotAllowed/.test(name)) throw this.#error('read the Object Lock configuration of', err);
    }
    this.#info = { objectLock, versioned: objectLock, payloadChecked: await this.#probePayloadCheck() };
    return this.#info;
  }

  /**
   * PUTs a few bytes under a payload hash they do not have: refused (as S3
   * and Ceph RGW do) means the object store checks what it receives. Anything
   * else (accepted, or refused for another reason) leaves the hashing to the
   * store. Key: <prefix>payload-check (overwritten by every start).
   */
  async #probePayloadCheck(): Promise<boolean> {
    const body = Buffer.from('holdfast: does this object store check payload hashes?\n');
    try {
      await this.#put(`${this.#o.prefix}payload-check`, body, {}, createHash('sha256').update('not the body').digest('hex'));
      return false;
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      if (PAYLOAD_MISMATCH.has(e.name ?? '')) return true;
      // (a server that folds the body's hash into the signature says SignatureDoesNotMatch: hashed here, to be safe)
      if (e.name === 'SignatureDoesNotMatch') return false;
      const status = e.$metadata?.httpStatusCode;
      if (status === undefined || status === 403 || status >= 500) throw this.#error('write to', err);
      return false;
    }
  }

  // ---------- keys ----------

  #tenantKey(tenant: string): string {
    assertTenant(tenant);
    return `${this.#o.prefix}tenants/${tenant}/`;
  }

  #fileKey(tenant: string, type: ReplicatedType, name: string): string {
    return this.#tenantKey(tenant) + filePath('', type, name).split(path.sep).join('/');
  }

  #partialKey(tenant: string, type: ReplicatedType, name: string, digest: string): string {
    if (!validName(type, name) || !HEX64.test(digest)) throw new HoldfastError('HF_INVALID_ARGUMENT', `invalid ${type} name or digest`);
    return `${this.#tenantKey(tenant)}partial/${type}-${name}-${digest}`;
  }

  /** Object Lock parameters for an object written now. */
  #retention(): Retention {
    if (!this.#info.objectLock || this.#o.graceSeconds <= 0) return {};
    return { ObjectLockMode: this.#o.lockMode, ObjectLockRetainUntilDate: new Date(Date.now() + this.#o.graceSeconds * 1000) };
  }

  // ---------- S3 calls and their errors ----------

  async #send<T = unknown>(what: string, command: object): Promise<T> {
    try {
      return (await this.client.send(command as never)) as T;
    } catch (err) {
      throw this.#error(what, err);
    }
  }

  /** A coded error for a failed S3 call; `what` is a verb phrase ("read pack 1a2b… of"). */
  #error(what: string, err: unknown): HoldfastError {
    if (err instanceof HoldfastError) return err;
    const e = err as { name?: string; $metadata?: { httpStatusCode?: number }; message?: string };
    const status = e.$metadata?.httpStatusCode;
    const where = `bucket ${this.#o.bucket}`;
    if (e.name === 'CredentialsProviderError') {
      return new HoldfastError('HF_STORE_S3_ACCESS_DENIED', `cannot ${what} ${where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the store's environment`, { cause: err });
    }
    if (e.name === 'NoSuchBucket') {
      return new HoldfastError('HF_STORE_S3_NO_BUCKET', `cannot ${what} ${where}: it does not exist; create it (with Object Lock enabled, for immutable offsite copies) or fix --s3-bucket`, { cause: err });
    }
    if (e.name === 'AccessDenied' || e.name === 'InvalidAccessKeyId' || e.name === 'SignatureDoesNotMatch' || status === 403) {
      return new HoldfastError('HF_STORE_S3_ACCESS_DENIED', `cannot ${what} ${where}: the object store refused (${e.name ?? status}: ${e.message ?? ''}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy`, { cause: err });
    }
    if (err instanceof S3ServiceException && status !== undefined && status < 500) {
      return new HoldfastError('HF_IO', `cannot ${what} ${where}: ${e.name}: ${e.message}`, { cause: err });
    }
    return new HoldfastError('HF_STORE_S3_UNAVAILABLE', `cannot ${what} ${where}: the object store did not answer (${e.name ?? 'error'}: ${e.message ?? String(err)}); check that it is up and reachable`, { cause: err });
  }

  static #notFound(err: unknown): boolean {
    const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
    return e.name === 'NotFound' || e.name === 'NoSuchKey' || e.$metadata?.httpStatusCode === 404;
  }

  async #head(key: string): Promise<{ size: number } | null> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.#o.bucket, Key: key }));
      return { size: r.ContentLength ?? 0 };
    } catch (err) {
      if (S3StoreBackend.#notFound(err)) return null;
      throw this.#error(`look up ${key} in`, err);
    }
  }

  async #getBytes(key: string, range?: [number, number]): Promise<Buffer | null> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.#o.bucket, Key: key, ...(range ? { Range: `bytes=${range[0]}-${range[1]}` } : {}) }));
      return Buffer.from(await r.Body!.transformToByteArray());
    } catch (err) {
      if (S3StoreBackend.#notFound(err)) return null;
      throw this.#error(`read ${key} in`, err);
    }
  }

  /** PUT with the payload's SHA-256 computed off the event loop (so the SDK does not hash it again on it). */
  async #put(key: string, body: Buffer | Buffer[], extra: Record<string, unknown> = {}, sha256Hex?: string): Promise<{ ETag?: string; VersionId?: string }> {
    const parts = Array.isArray(body) ? body : [body];
    const length = parts.reduce((n, p) => n + p.length, 0);
    const payload = parts.length === 1 ? parts[0]! : new SlabBody(parts);
    const cmd = new PutObjectCommand({ Bucket: this.#o.bucket, Key: key, Body: payload as Buffer, ContentLength: length, ...extra });
    await withPayloadHash(cmd, parts, sha256Hex);
    return this.client.send(cmd);
  }

  /** Deletes every version of a key (or just the current one, on an unversioned bucket). */
  async #deleteAll(key: string): Promise<void> {
    if (!this.#info.versioned) {
      await this.#send(`delete ${key} in`, new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key }));
      return;
    }
    for (const v of await this.#versions(key, true)) {
      if (v.key !== key) continue;
      await this.#send(`delete ${key} in`, new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key, VersionId: v.versionId }));
    }
  }

  /** Versions and delete markers under a prefix (only the exact key when exact). */
  async #versions(prefix: string, exact = false): Promise<{ key: string; versionId: string; latest: boolean; marker: boolean; modified: Date; size: number }[]> {
    const out: { key: string; versionId: string; latest: boolean; marker: boolean; modified: Date; size: number }[] = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const r = await this.#send<{ Versions?: { Key?: string; VersionId?: string; IsLatest?: boolean; LastModified?: Date; Size?: number }[]; DeleteMarkers?: { Key?: string; VersionId?: string; IsLatest?: boolean; LastModified?: Date }[]; IsTruncated?: boolean; NextKeyMarker?: string; NextVersionIdMarker?: string }>(
        `list versions of ${prefix} in`,
        new ListObjectVersionsCommand({ Bucket: this.#o.bucket, Prefix: prefix, KeyMarker: keyMarker, VersionIdMarker: versionMarker }),
      );
      for (const v of r.Versions ?? []) out.push({ key: v.Key!, versionId: v.VersionId ?? 'null', latest: v.IsLatest ?? false, marker: false, modified: v.LastModified ?? new Date(0), size: v.Size ?? 0 });
      for (const m of r.DeleteMarkers ?? []) out.push({ key: m.Key!, versionId: m.VersionId ?? 'null', latest: m.IsLatest ?? false, marker: true, modified: m.LastModified ?? new Date(0), size: 0 });
      if (!r.IsTruncated) break;
      keyMarker = r.NextKeyMarker;
      versionMarker = r.NextVersionIdMarker;
    }
    return exact ? out.filter((v) => v.key === prefix) : out;
  }

  /** Keys and sizes under a prefix, after startAfter, up to limit (all when limit is Infinity). */
  async #list(prefix: string, startAfter: string | undefined, limit: number): Promise<{ items: { key: string; size: number; modified: Date }[]; more: boolean }> {
    const items: { key: string; size: number; modified: Date }[] = [];
    let token: string | undefined;
    for (;;) {
      const r = await this.#send<{ Contents?: { Key?: string; Size?: number; LastModified?: Date }[]; IsTruncated?: boolean; NextContinuationToken?: string }>(
        `list ${prefix} in`,
        new ListObjectsV2Command({ Bucket: this.#o.bucket, Prefix: prefix, ContinuationToken: token, StartAfter: token ? undefined : startAfter, MaxKeys: Number.isFinite(limit) ? Math.min(1000, limit - items.length + 1) : 1000 }),
      );
      for (const c of r.Contents ?? []) items.push({ key: c.Key!, size: c.Size ?? 0, modified: c.LastModified ?? new Date(0) });
      if (items.length > limit) return { items: items.slice(0, limit), more: true };
      if (!r.IsTruncated) return { items, more: false };
      token = r.NextContinuationToken;
    }
  }

  // ---------- StoreBackend ----------

  async stat(tenant: string, type: ReplicatedType, name: string): Promise<number | null> {
    return (await this.#head(this.#fileKey(tenant, type, name)))?.size ?? null;
  }

  async partial(tenant: string, type: ReplicatedType, name: string, digest: string): Promise<number | null> {
    const state = await this.#state(this.#partialKey(tenant, type, name, digest));
    return state ? state.parts.reduce((n, p) => n + p.size, 0) : null;
  }

  storesOnce(size: number): boolean {
    return size <= this.#o.singlePutMax;
  }

  async partials(tenant: string, files: readonly { type: ReplicatedType; name: string; digest: string }[]): Promise<(number | null)[]> {
    // One listing of the tenant's upload states (few, as a rule) instead of a GET per file.
    const keys = files.map((f) => this.#partialKey(tenant, f.type, f.name, f.digest));
    if (keys.length === 0) return [];
    const { items } = await this.#list(`${this.#tenantKey(tenant)}partial/`, undefined, Infinity);
    const present = new Set(items.map((i) => i.key));
    return Promise.all(keys.map(async (k) => {
      const state = present.has(k) ? await this.#state(k) : null;
      return state ? state.parts.reduce((n, p) => n + p.size, 0) : null;
    }));
  }

  async #state(key: string): Promise<UploadState | null> {
    const bytes = await this.#getBytes(key);
    if (!bytes) return null;
    try {
      const s = JSON.parse(bytes.toString('utf8')) as UploadState;
      if (s.v !== 1 || typeof s.uploadId !== 'string' || !Array.isArray(s.parts)) return null;
      return s;
    } catch {
      return null; // a damaged state only costs a restart of that upload
    }
  }

  /**
   * Claims the upload of one file for this process: generation g+1 of its
   * lock is created with If-None-Match, so of two front-ends taking over an
   * expired claim only one wins. The claim is renewed every third of the
   * lease; a holder that finds a newer generation has lost it.
   */
  async #claim(partialKey: string, what: string): Promise<Lease> {
    const lockPrefix = `${partialKey}.lock.`;
    const { items } = await this.#list(lockPrefix, undefined, Infinity);
    const gens = items.map((i) => Number(i.key.slice(lockPrefix.length))).filter((g) => Number.isSafeInteger(g)).sort((a, b) => a - b);
    const top = gens.at(-1);
    if (top !== undefined) {
      const body = await this.#getBytes(lockPrefix + String(top).padStart(8, '0'));
      let until = 0;
      try { until = body ? Number((JSON.parse(body.toString('utf8')) as { until?: number }).until) || 0 : 0; } catch { until = 0; } // a damaged claim has lapsed
      if (until > Date.now()) {
        throw new HoldfastError('HF_STORE_BUSY', `${what} is being uploaded by another connection or front-end; try again when it ends (its claim lapses within ${this.#o.leaseSeconds} s if that front-end is gone)`);
      }
    }
    const gen = (top ?? 0) + 1;
    const key = lockPrefix + String(gen).padStart(8, '0');
    const lease = () => Buffer.from(JSON.stringify({ owner: OWNER, until: Date.now() + this.#o.leaseSeconds * 1000 }));
    let version: string | undefined;
    try {
      version = (await this.client.send(new PutObjectCommand({ Bucket: this.#o.bucket, Key: key, Body: lease(), IfNoneMatch: '*' }))).VersionId;
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      if (e.name === 'PreconditionFailed' || e.$metadata?.httpStatusCode === 412 || e.$metadata?.httpStatusCode === 409) {
        throw new HoldfastError('HF_STORE_BUSY', `${what} was claimed by another front-end at the same moment; try again`);
      }
      throw this.#error(`claim the upload of ${what} in`, err);
    }
    if (this.#info.versioned) {
      // A versioned bucket (Object Lock) on Ceph RGW ignores If-None-Match:
      // two front-ends may both have written this key. The oldest version
      // holds the claim; a later one withdraws.
      const versions = await this.#versions(key, true);
      const oldest = versions.filter((v) => !v.marker).at(-1);
      if (oldest && version !== undefined && oldest.versionId !== version) {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key, VersionId: version })).catch(() => undefined);
        throw new HoldfastError('HF_STORE_BUSY', `${what} was claimed by another front-end at the same moment; try again`);
      }
    }
    for (const g of gens) await this.#deleteAll(lockPrefix + String(g).padStart(8, '0')).catch(() => undefined);
    let lost = false;
    let released = false;
    const renew = async () => {
      if (released || lost) return;
      const newer = await this.#list(lockPrefix, key, 1).catch(() => null);
      if (newer && newer.items.length > 0) { lost = true; return; }
      const r = await this.client.send(new PutObjectCommand({ Bucket: this.#o.bucket, Key: key, Body: lease() })).catch(() => null);
      if (r && this.#info.versioned && version) {
        const old = version;
        version = r.VersionId;
        await this.client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key, VersionId: old })).catch(() => undefined);
      }
    };
    const timer = setInterval(() => void renew(), Math.max(1000, (this.#o.leaseSeconds * 1000) / 3));
    timer.unref();
    return {
      lost: () => lost,
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(timer);
        await this.#deleteAll(key).catch(() => undefined);
      },
    };
  }

  async openUpload(tenant: string, type: ReplicatedType, name: string, digest: string, size?: number): Promise<Upload> {
    const partialKey = this.#partialKey(tenant, type, name, digest);
    const key = this.#fileKey(tenant, type, name);
    const what = `${type} ${name.slice(0, 16)} of tenant ${tenant}`;
    const context = { type, key, partialKey, what, digest, singlePutMax: this.#o.singlePutMax, onCommitted: (n: number) => this.#addUsage(tenant, n) };
    if (size !== undefined && size <= this.#o.singlePutMax) {
      // Buffered here and stored by one PUT that fails if the object exists:
      // nothing in the bucket until then, so nothing to claim or resume (two
      // front-ends may receive it at once; the first PUT stores it).
      return new S3Upload(this, { ...context, lease: NO_CLAIM, state: null, partSize: this.#o.partSize, announced: size });
    }
    const lease = await this.#claim(partialKey, what);
    let state: UploadState | null;
    try {
      state = await this.#state(partialKey);
      if (state && (state.key !== key || state.partSize < MIN_PART || state.partSize % SLAB !== 0)) state = null;
      if (state) {
        // The state object names each part (with the hash state after it)
        // before the part is sent; S3's own list of the parts says which
        // arrived. The parts both name, from the first on, are kept; the
        // rest (in flight when a front-end died) are sent again.
        const listed = await this.#listParts(key, state.uploadId);
        if (listed === null) state = null;
        else {
          let ok = 0;
          for (const p of state.parts) {
            const l = listed.get(p.n);
            if (p.n !== ok + 1 || p.hash === '' || !l || l.size !== p.size) break;
            p.etag = l.etag;
            ok++;
          }
          state.parts = state.parts.slice(0, ok);
        }
      }
    } catch (err) {
      await lease.release();
      throw err;
    }
    return new S3Upload(this, { ...context, lease, state, partSize: state?.partSize ?? this.#o.partSize, announced: null });
  }

  /** Parts S3 holds for an upload, or null when the upload is gone. */
  async #listParts(key: string, uploadId: string): Promise<Map<number, { size: number; etag: string }> | null> {
    const out = new Map<number, { size: number; etag: string }>();
    let marker: string | undefined;
    for (;;) {
      let r;
      try {
        r = await this.client.send(new ListPartsCommand({ Bucket: this.#o.bucket, Key: key, UploadId: uploadId, PartNumberMarker: marker }));
      } catch (err) {
        if ((err as { name?: string }).name === 'NoSuchUpload' || S3StoreBackend.#notFound(err)) return null;
        throw this.#error(`list the parts of ${key} in`, err);
      }
      for (const p of r.Parts ?? []) out.set(p.PartNumber!, { size: p.Size ?? 0, etag: p.ETag ?? '' });
      if (!r.IsTruncated) return out;
      marker = r.NextPartNumberMarker;
    }
  }

  // Used by S3Upload.
  /** @internal */ get bucket(): string { return this.#o.bucket; }
  /** @internal */ retention(): Retention { return this.#retention(); }
  /** @internal */ error(what: string, err: unknown): HoldfastError { return this.#error(what, err); }
  /** @internal */ readonly slabs = new SlabPool();
  /** @internal */ putStream(key: string, body: Readable, length: number, extra: Record<string, unknown>, sha256Hex: string, signal: AbortSignal): Promise<unknown> {
    const cmd = new PutObjectCommand({ Bucket: this.#o.bucket, Key: key, Body: body, ContentLength: length, ...extra });
    return withPayloadHash(cmd, [], sha256Hex).then(() => this.client.send(cmd, { abortSignal: signal }));
  }
  /** @internal */ put(key: string, body: Buffer | Buffer[], extra?: Record<string, unknown>, sha256Hex?: string): Promise<{ ETag?: string; VersionId?: string }> { return this.#put(key, body, extra, sha256Hex); }
  /** @internal */ deleteAll(key: string): Promise<void> { return this.#deleteAll(key); }
  /** @internal */ getBytes(key: string): Promise<Buffer | null> { return this.#getBytes(key); }
  /** @internal */ head(key: string): Promise<{ size: number } | null> { return this.#head(key); }

  async read(tenant: string, type: ReplicatedType, name: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const key = this.#fileKey(tenant, type, name);
    const missing = () => new HoldfastError('HF_STORE_NOT_FOUND', `${type} ${name} is not on the store`);
    if (length === 0) {
      if (await this.#head(key) === null) throw missing();
      return into ?? Buffer.alloc(0);
    }
    let got: Buffer | null;
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.#o.bucket, Key: key, Range: `bytes=${offset}-${offset + length - 1}` }));
      const out = into ?? Buffer.allocUnsafe(length);
      let at = 0;
      for await (const piece of r.Body as AsyncIterable<Uint8Array>) {
        if (at + piece.length > length) throw new HoldfastError('HF_IO', `${type} ${name}: the object store sent more than the ${length} bytes asked for`);
        out.set(piece, at);
        at += piece.length;
      }
      got = at === length ? out : null;
      if (got === null) throw new HoldfastError('HF_IO', `${type} ${name}: ${at} of ${length} bytes at ${offset} (the file is shorter)`);
    } catch (err) {
      if (S3StoreBackend.#notFound(err)) throw missing();
      throw this.#error(`read ${type} ${name.slice(0, 16)} of tenant ${tenant} from`, err);
    }
    return got;
  }

  async list(tenant: string, type: ReplicatedType, after: string | undefined, limit: number): Promise<{ files: StoredFile[]; more: boolean }> {
    const base = this.#tenantKey(tenant);
    if (type === 'config') {
      const size = await this.stat(tenant, 'config', 'config');
      const files = size === null || (after !== undefined && after >= 'config') ? [] : [{ name: 'config', size }];
      return { files: files.slice(0, limit), more: files.length > limit };
    }
    const prefix = base + TYPE_DIRS[type];
    const startAfter = after === undefined || after === '' ? undefined : (type === 'pack' ? `${prefix}${after.slice(0, 2)}/${after}` : prefix + after);
    const files: StoredFile[] = [];
    let from = startAfter;
    for (;;) {
      const { items, more } = await this.#list(prefix, from, limit + 1 - files.length);
      for (const i of items) {
        const name = i.key.slice(i.key.lastIndexOf('/') + 1);
        const expected = validName(type, name) ? this.#fileKey(tenant, type, name) : null;
        if (expected === i.key) files.push({ name, size: i.size });
      }
      if (files.length > limit) return { files: files.slice(0, limit), more: true };
      if (!more || items.length === 0) return { files, more: false };
      from = items.at(-1)!.key;
    }
  }

  async remove(tenant: string, type: ReplicatedType, name: string, now: Date): Promise<Date | null> {
    const key = this.#fileKey(tenant, type, name);
    const entry = `${String(now.getTime()).padStart(13, '0')}-${randomBytes(4).toString('hex')}-${type}-${name}`;
    const trashKey = `${this.#tenantKey(tenant)}trash/${entry}`;
    // S3 has no rename: copy to the trash (with a retention of its own), then delete.
    try {
      await this.client.send(new CopyObjectCommand({ Bucket: this.#o.bucket, Key: trashKey, CopySource: copySource(this.#o.bucket, key), ...this.#retention() }));
    } catch (err) {
      if (S3StoreBackend.#notFound(err)) return null;
      throw this.#error(`move ${type} ${name.slice(0, 16)} of tenant ${tenant} to the trash in`, err);
    }
    await this.#removeLive(key);
    this.#usage.delete(tenant);
    return now;
  }

  /**
   * Takes a file out of the live namespace. On a versioned (locked) bucket
   * this leaves a delete marker over the version, which may be under
   * retention still; purge removes it with the tombstone.
   */
  async #removeLive(key: string): Promise<void> {
    await this.#send(`delete ${key} in`, new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key }));
  }

  async #trashEntries(tenant: string): Promise<(TrashEntry & { key: string })[]> {
    const prefix = `${this.#tenantKey(tenant)}trash/`;
    const { items } = await this.#list(prefix, undefined, Infinity);
    const out: (TrashEntry & { key: string })[] = [];
    for (const i of items) {
      const m = TRASH_ENTRY.exec(i.key.slice(prefix.length));
      if (!m) continue;
      const type = m[3] as ReplicatedType;
      if (!validName(type, m[4]!)) continue;
      out.push({ type, name: m[4]!, size: i.size, deletedAt: new Date(Number(m[1])), key: i.key });
    }
    return out.sort((a, b) => a.deletedAt.getTime() - b.deletedAt.getTime());
  }

  async trash(tenant: string): Promise<TrashEntry[]> {
    return (await this.#trashEntries(tenant)).map(({ key: _key, ...e }) => e);
  }

  async undelete(tenant: string, match: (e: TrashEntry) => boolean = () => true): Promise<number> {
    let n = 0;
    for (const e of await this.#trashEntries(tenant)) {
      if (!match(e)) continue;
      const key = this.#fileKey(tenant, e.type, e.name);
      if (await this.#head(key) === null) {
        await this.#send(`restore ${e.type} ${e.name.slice(0, 16)} of tenant ${tenant} from the trash in`,
          new CopyObjectCommand({ Bucket: this.#o.bucket, Key: key, CopySource: copySource(this.#o.bucket, e.key), ...this.#retention() }));
        n++;
      }
      await this.#removeLive(e.key);
    }
    this.#usage.delete(tenant);
    return n;
  }

  async purge(before: Date): Promise<number> {
    await this.refreshRetention();
    let n = 0;
    const cut = before.getTime();
    for (const tenant of await this.tenants()) {
      const base = this.#tenantKey(tenant);
      // Tombstones older than the cut-off: every version of each (and, on a
      // locked bucket, those a restore left hidden under a delete marker).
      const trashPrefix = `${base}trash/`;
      if (this.#info.versioned) {
        // Every version of a tombstone (a restored one hides under a delete
        // marker), and the versions a delete left hidden under its live key:
        // written before it was deleted, so out of retention by now.
        const byKey = new Map<string, { versionId: string; latest: boolean; marker: boolean }[]>();
        for (const v of await this.#versions(trashPrefix)) {
          const m = TRASH_ENTRY.exec(v.key.slice(trashPrefix.length));
          if (!m || Number(m[1]) >= cut) continue;
          byKey.set(v.key, [...byKey.get(v.key) ?? [], v]);
        }
        for (const [key, versions] of byKey) {
          const m = TRASH_ENTRY.exec(key.slice(trashPrefix.length))!;
          // The live key's hidden versions first: one still under retention
          // (refreshed while it was live) keeps the tombstone for a later pass.
          let kept = false;
          const live = this.#fileKey(tenant, m[3] as ReplicatedType, m[4]!);
          for (const v of await this.#versions(live, true)) {
            if (v.latest && !v.marker) continue; // uploaded again since: that copy stays
            kept = !(await this.#deleteVersion(live, v.versionId)) || kept;
          }
          if (kept) continue;
          for (const v of versions) kept = !(await this.#deleteVersion(key, v.versionId)) || kept;
          if (!kept && versions.some((v) => v.latest && !v.marker)) n++;
        }
      } else {
        for (const e of await this.#trashEntries(tenant)) {
          if (e.deletedAt.getTime() >= cut) continue;
          await this.#send(`purge ${e.key} from`, new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: e.key }));
          n++;
        }
      }
      // Uploads abandoned for longer than the grace period.
      const partialPrefix = `${base}partial/`;
      const { items } = await this.#list(partialPrefix, undefined, Infinity);
      for (const i of items) {
        if (i.modified.getTime() >= cut) continue;
        const rest = i.key.slice(partialPrefix.length);
        if (!rest.includes('.lock.')) {
          const state = await this.#state(i.key);
          if (state) await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.#o.bucket, Key: state.key, UploadId: state.uploadId })).catch(() => undefined);
          n++;
        }
        await this.#deleteAll(i.key).catch(() => undefined);
      }
      // Multipart uploads no state object names (a front-end killed before it saved one).
      let keyMarker: string | undefined;
      let idMarker: string | undefined;
      for (;;) {
        const r = await this.#send<{ Uploads?: { Key?: string; UploadId?: string; Initiated?: Date }[]; IsTruncated?: boolean; NextKeyMarker?: string; NextUploadIdMarker?: string }>(
          `list the uploads in progress under ${base} in`,
          new ListMultipartUploadsCommand({ Bucket: this.#o.bucket, Prefix: base, KeyMarker: keyMarker, UploadIdMarker: idMarker }),
        );
        for (const u of r.Uploads ?? []) {
          if ((u.Initiated?.getTime() ?? 0) >= cut) continue;
          await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.#o.bucket, Key: u.Key!, UploadId: u.UploadId! })).catch(() => undefined);
        }
        if (!r.IsTruncated) break;
        keyMarker = r.NextKeyMarker;
        idMarker = r.NextUploadIdMarker;
      }
      this.#usage.delete(tenant);
    }
    return n;
  }

  /**
   * On a locked bucket, keeps every live file under retention for as long as
   * it is live: when the bucket's mark says the last refresh is more than
   * half a grace period old, every live file's retention is extended to now +
   * the grace period (tombstones keep their own: deleted + grace). With purge
   * running at least every quarter of the grace period on some front-end, no
   * live file is ever out of retention, so no credential can destroy one
   * without a delete that leaves a tombstone for the grace period first.
   * Resolves with how many files were extended.
   */
  async refreshRetention(): Promise<number> {
    if (!this.#info.objectLock || this.#o.graceSeconds <= 0) return 0;
    const markKey = `${this.#o.prefix}retention-refreshed`;
    const mark = await this.#getBytes(markKey);
    let last = 0;
    try { last = Number((JSON.parse(mark?.toString('utf8') ?? '{}') as { at?: number }).at) || 0; } catch { last = 0; }
    const started = Date.now();
    if (started - last < (this.#o.graceSeconds * 1000) / 2) return 0;
    const until = new Date(started + this.#o.graceSeconds * 1000);
    let n = 0;
    for (const tenant of await this.tenants()) {
      const base = this.#tenantKey(tenant);
      for (const i of (await this.#list(base, undefined, Infinity)).items) {
        const rest = i.key.slice(base.length);
        if (rest.startsWith('trash/') || rest.startsWith('partial/')) continue;
        try {
          await this.client.send(new PutObjectRetentionCommand({ Bucket: this.#o.bucket, Key: i.key, Retention: { Mode: this.#o.lockMode, RetainUntilDate: until } }));
          n++;
        } catch (err) {
          // written since with a later retention (it cannot be shortened), or deleted meanwhile
          if (S3StoreBackend.#notFound(err) || this.#error('extend the retention of', err).code === 'HF_STORE_S3_ACCESS_DENIED') continue;
          throw this.#error(`extend the retention of ${i.key} in`, err);
        }
      }
    }
    await this.#put(markKey, Buffer.from(JSON.stringify({ at: started, files: n, until: until.toISOString() })));
    return n;
  }

  /** Deletes one version for good; false when Object Lock still holds it (the next purge tries again). */
  async #deleteVersion(key: string, versionId: string): Promise<boolean> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key, VersionId: versionId }));
      return true;
    } catch (err) {
      const e = this.#error(`purge ${key} from`, err);
      if (e.code === 'HF_STORE_S3_ACCESS_DENIED' && /object lock|retention/i.test(String((err as Error).message))) return false;
      throw e;
    }
  }

  /**
   * Usage from one listing of the tenant's keys, reused for usageTtlSeconds
   * (plus what this front-end committed since): a quota check costs no
   * listing per request, and may be overshot by what other front-ends
   * accepted within that time.
   */
  async usage(tenant: string): Promise<TenantUsage> {
    const cached = this.#usage.get(tenant);
    if (cached && Date.now() - cached.at < this.#o.usageTtlSeconds * 1000) return cached.usage;
    const base = this.#tenantKey(tenant);
    const u: TenantUsage = { files: 0, bytes: 0, partialBytes: 0, trashBytes: 0 };
    const { items } = await this.#list(base, undefined, Infinity);
    for (const i of items) {
      const rest = i.key.slice(base.length);
      if (rest.startsWith('trash/')) u.trashBytes += i.size;
      else if (rest.startsWith('partial/')) {
        if (rest.includes('.lock.')) continue;
        const state = await this.#state(i.key).catch(() => null);
        if (state) u.partialBytes += state.parts.reduce((n, p) => n + p.size, 0);
      } else {
        u.files++;
        u.bytes += i.size;
      }
    }
    this.#usage.set(tenant, { at: Date.now(), usage: u });
    return u;
  }

  #addUsage(tenant: string, bytes: number): void {
    const c = this.#usage.get(tenant);
    if (c) c.usage = { ...c.usage, bytes: c.usage.bytes + bytes, files: c.usage.files + 1 };
  }

  async tenants(): Promise<string[]> {
    const prefix = `${this.#o.prefix}tenants/`;
    const out: string[] = [];
    let token: string | undefined;
    for (;;) {
      const r = await this.#send<{ CommonPrefixes?: { Prefix?: string }[]; IsTruncated?: boolean; NextContinuationToken?: string }>(
        'list the tenants in',
        new ListObjectsV2Command({ Bucket: this.#o.bucket, Prefix: prefix, Delimiter: '/', ContinuationToken: token }),
      );
      for (const p of r.CommonPrefixes ?? []) {
        const t = p.Prefix!.slice(prefix.length, -1);
        if (/^[a-z0-9][a-z0-9-]{0,62}$/.test(t)) out.push(t);
      }
      if (!r.IsTruncated) break;
      token = r.NextContinuationToken;
    }
    return out.sort();
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

/**
 * Sets x-amz-content-sha256 on a command from a SHA-256 computed on the
 * threadpool, so the SigV4 signer uses it instead of hashing the body on the
 * event loop.
 */
async function withPayloadHash(cmd: { middlewareStack: { add: (mw: never, o: { step: 'build'; name: string }) => void } }, parts: Buffer[], known?: string): Promise<void> {
  const hex = known ?? (await sha256(parts)).toString('hex');
  cmd.middlewareStack.add(((next: (a: { request: { headers: Record<string, string> } }) => Promise<unknown>) => (args: { request: { headers: Record<string, string> } }) => {
    args.request.headers['x-amz-content-sha256'] = hex;
    return next(args);
  }) as never, { step: 'build', name: 'holdfastPayloadHash' });
}

/** The PUT of a streamed one-PUT file: its body, result, abort, and a write waiting for the body to drain. */
interface StreamedPut {
  body: Readable;
  done: Promise<unknown>;
  abort: AbortController;
  /** The PUT has settled: nothing reads the body any more. */
  settled: boolean;
  wake: (() => void) | null;
}

interface UploadContext {
  type: ReplicatedType;
  key: string;
  partialKey: string;
  what: string;
  digest: string;
  lease: Lease;
  state: UploadState | null;
  partSize: number;
  singlePutMax: number;
  /** The size announced at open when the file goes in one unclaimed PUT; null: claimed, maybe multipart. */
  announced: number | null;
  onCommitted: (size: number) => void;
}

/**
 * One upload into S3. Writes arrive in order (the session writes one after
 * another); bytes are gathered into parts of partSize; each full part is
 * hashed (threadpool), sent, and recorded with the hash state after it. Up
 * to two parts are in flight. Bytes not yet in a recorded part are lost when
 * the upload closes without commit; `stored` is always a part boundary.
 */
class S3Upload implements Upload {
  readonly stored: number;
  /** Parts are hashed here as they go, a one-PUT file by the object store (or here, when it does not check): the caller need not hash. */
  readonly checksDigest = true;
  readonly #b: S3StoreBackend;
  readonly #c: UploadContext;
  #uploadId: string | null;
  /** Parts sent or being sent, in order (the state object names them before they go). */
  #parts: PartRecord[];
  /** Hash of every byte in parts sent or being sent. */
  #hasher: Hasher;
  /** Slabs holding the bytes gathered for the next part (or the whole file, while it may still go in one PUT); all full but the last. */
  #pending: Buffer[] = [];
  #pendingLength = 0;
  /** Parts being sent, in order. */
  #inflight: Promise<void>[] = [];
  /** Bytes in those parts. */
  #sent: number;
  #stateVersion: string | undefined;
  #stateChain: Promise<void> = Promise.resolve();
  /**
   * A one-PUT file the object store checks (announced size, payload hash =
   * the announced digest) goes out while it arrives: the PUT starts with the
   * first write and is fed each piece (the caller's own when it gives them,
   * else a copy). Nothing is visible unless all the bytes arrive and hash to
   * the digest; a close before that aborts the request. A write waits while
   * more than STREAM_AHEAD bytes wait for the object store.
   */
  #stream: StreamedPut | null = null;
  #failed: unknown = null;
  #closed = false;

  constructor(b: S3StoreBackend, c: UploadContext) {
    this.#b = b;
    this.#c = c;
    this.#uploadId = c.state?.uploadId ?? null;
    this.#parts = c.state?.parts ?? [];
    this.stored = this.#parts.reduce((n, p) => n + p.size, 0);
    this.#sent = this.stored;
    const last = this.#parts.at(-1);
    this.#hasher = last ? Hasher.fromState(Buffer.from(last.hash, 'base64')) : new Hasher();
  }

  get #end(): number {
    return this.#sent + this.#pendingLength;
  }

  async resumeAt(offset: number): Promise<{ at: number; hasher: Hasher }> {
    // Rewind to the last recorded part boundary at or before offset.
    let at = 0;
    let keep = 0;
    for (const p of this.#parts) {
      if (at + p.size > offset) break;
      at += p.size;
      keep++;
    }
    if (keep < this.#parts.length) {
      this.#parts = this.#parts.slice(0, keep);
      this.#sent = at;
      this.#hasher = keep > 0 ? Hasher.fromState(Buffer.from(this.#parts[keep - 1]!.hash, 'base64')) : new Hasher();
      await this.#saveState();
    }
    const hasher = keep > 0 ? Hasher.fromState(Buffer.from(this.#parts[keep - 1]!.hash, 'base64')) : new Hasher();
    return { at, hasher };
  }

  #check(): void {
    if (this.#failed) throw this.#failed;
    if (this.#c.lease.lost()) throw new HoldfastError('HF_STORE_BUSY', `${this.#c.what}: another front-end took over this upload (this one was silent past its lease)`);
  }

  async write(parts: readonly Uint8Array[], position: number, owned = false): Promise<void> {
    this.#check();
    if (this.#c.announced !== null && this.#c.announced > 0 && this.#b.info.payloadChecked) return this.#streamWrite(this.#fresh(parts, position), owned);
    for (let piece of this.#fresh(parts, position)) {
      // copied: the caller's buffers go back to a pool once this resolves
      while (piece.length > 0) {
        const fill = this.#pendingLength % SLAB;
        if (fill === 0) this.#pending.push(this.#b.slabs.take());
        const n = piece.copy(this.#pending.at(-1)!, fill);
        this.#pendingLength += n;
        piece = piece.subarray(n);
      }
    }
    // Past the single-PUT size, full parts go out as they fill.
    if (this.#sent + this.#pendingLength > this.#c.singlePutMax || this.#uploadId !== null) {
      while (this.#pendingLength >= this.#c.partSize) await this.#sendPart(this.#take(this.#c.partSize));
    }
  }

  /**
   * The pieces of a write beyond the bytes the upload holds (those it has
   * are skipped); a hole, or a byte past the announced size, is
   * HF_STORE_BAD_OFFSET before anything is taken.
   */
  #fresh(parts: readonly Uint8Array[], position: number): Buffer[] {
    const out: Buffer[] = [];
    let at = position;
    let end = this.#end;
    for (const p of parts) {
      const piece = Buffer.from(p.buffer, p.byteOffset, p.length);
      if (at + piece.length <= end) { at += piece.length; continue; }
      if (at > end) throw new HoldfastError('HF_STORE_BAD_OFFSET', `${this.#c.what}: a write at ${at}, but the upload ends at ${end}`);
      out.push(piece.subarray(end - at));
      at += piece.length;
      end = at;
      if (this.#c.announced !== null && at > this.#c.announced) {
        throw new HoldfastError('HF_STORE_BAD_OFFSET', `${this.#c.what}: a write past the announced ${this.#c.announced} bytes`);
      }
    }
    return out;
  }

  /** write() of a streamed one-PUT file: the PUT starts with the first bytes; the last one ends its body. */
  async #streamWrite(pieces: Buffer[], owned: boolean): Promise<void> {
    const size = this.#c.announced!;
    if (this.#stream === null) {
      const abort = new AbortController();
      const st: StreamedPut = {
        body: new Readable({ read: () => { const w = st.wake; st.wake = null; w?.(); } }),
        done: Promise.resolve(), abort, settled: false, wake: null,
      };
      st.done = this.#b.putStream(this.#c.key, st.body, size, { ...this.#b.retention(), IfNoneMatch: '*' }, this.#c.digest, abort.signal);
      st.done.catch((err: unknown) => {
        // Awaited by commit or #release; a failure other than "there already" or a digest refused ends the upload at once.
        if (abort.signal.aborted || PAYLOAD_MISMATCH.has((err as { name?: string }).name ?? '') || preconditionFailed(err)) return;
        this.#failed ??= this.#b.error(`store ${this.#c.what} in`, err);
      }).finally(() => { st.settled = true; const w = st.wake; st.wake = null; w?.(); });
      this.#stream = st;
    }
    const st = this.#stream;
    for (const piece of pieces) {
      // the caller's buffers, when given; else copied (they go back to a pool once this resolves)
      st.body.push(owned ? piece : Buffer.from(piece));
      this.#pendingLength += piece.length;
    }
    if (this.#pendingLength === size) st.body.push(null);
    // Backpressure: the next write waits until the object store has taken most of this.
    while (st.body.readableLength > STREAM_AHEAD && !st.settled && !this.#closed) {
      await new Promise<void>((resolve) => { st.wake = resolve; });
      this.#check();
    }
  }

  /** The bytes gathered, as views of their slabs. */
  #pendingViews(): Buffer[] {
    const last = this.#pendingLength % SLAB;
    return this.#pending.map((s, i) => (i === this.#pending.length - 1 && last !== 0 ? s.subarray(0, last) : s));
  }

  /** Takes the first n bytes gathered: whole slabs (n a multiple of SLAB), or everything. */
  #take(n: number): Chunk {
    if (n === this.#pendingLength) {
      const views = this.#pendingViews();
      const slabs = this.#pending;
      this.#pending = [];
      this.#pendingLength = 0;
      return { views, slabs, size: n };
    }
    if (n % SLAB !== 0 || n > this.#pendingLength) throw new Error(`cannot take ${n} of ${this.#pendingLength} bytes in slabs`);
    const slabs = this.#pending.splice(0, n / SLAB);
    this.#pendingLength -= n;
    return { views: slabs, slabs, size: n };
  }

  async #ensureUpload(): Promise<string> {
    if (this.#uploadId === null) {
      try {
        // Retention is set once the object exists (S3 applies it at
        // completion on AWS; Ceph ignores it on CreateMultipartUpload).
        const r = await this.#b.client.send(new CreateMultipartUploadCommand({ Bucket: this.#b.bucket, Key: this.#c.key, ...this.#b.retention() }));
        this.#uploadId = r.UploadId!;
      } catch (err) {
        throw this.#b.error(`begin the upload of ${this.#c.what} in`, err);
      }
    }
    return this.#uploadId;
  }

  async #sendPart(chunk: Chunk, record = true): Promise<void> {
    const { views: bytes, size } = chunk;
    const n = this.#parts.length + 1;
    if (n > MAX_PARTS) throw new HoldfastError('HF_STORE_BAD_OFFSET', `${this.#c.what}: more than ${MAX_PARTS} parts; the file is too large for the part size`);
    // The last part (sent at commit, already hashed there) carries no resumable state.
    if (record) await this.#hasher.update(bytes);
    const rec: PartRecord = { n, size, etag: '', hash: record ? this.#hasher.state().toString('base64') : '' };
    const uploadId = await this.#ensureUpload();
    this.#parts.push(rec);
    this.#sent += size;
    // Named in the state before it is sent: a part S3 holds is never sent again.
    if (record) await this.#saveState();
    const done = (async (): Promise<void> => {
      try {
        const body = bytes.length === 1 ? bytes[0]! : new SlabBody(bytes);
        const cmd = new UploadPartCommand({ Bucket: this.#b.bucket, Key: this.#c.key, UploadId: uploadId, PartNumber: n, Body: body as Buffer, ContentLength: size });
        await withPayloadHash(cmd as never, bytes);
        rec.etag = (await this.#b.client.send(cmd)).ETag ?? '';
      } catch (err) {
        throw this.#b.error(`send part ${n} of ${this.#c.what} to`, err);
      } finally {
        this.#b.slabs.give(chunk.slabs);
      }
    })();
    done.catch((err: unknown) => { this.#failed ??= err; });
    this.#inflight.push(done);
    // At most two in flight: wait for the oldest, and go on.
    while (this.#inflight.length > 1) await this.#settleOldest();
  }

  async #settleOldest(): Promise<void> {
    await this.#inflight[0]!;
    this.#inflight.shift();
  }

  /** Writes the state object (one write at a time, in order); on a versioned bucket the version it replaces goes. */
  #saveState(): Promise<void> {
    const next = this.#stateChain.then(async () => {
      if (this.#uploadId === null) return;
      const state: UploadState = { v: 1, uploadId: this.#uploadId, key: this.#c.key, partSize: this.#c.partSize, parts: this.#parts.filter((p) => p.hash !== '') };
      const r = await this.#b.put(this.#c.partialKey, Buffer.from(JSON.stringify(state))).catch((err: unknown) => { throw this.#b.error(`record the upload of ${this.#c.what} in`, err); });
      if (this.#b.info.versioned && this.#stateVersion && r.VersionId !== this.#stateVersion) {
        await this.#b.client.send(new DeleteObjectCommand({ Bucket: this.#b.bucket, Key: this.#c.partialKey, VersionId: this.#stateVersion })).catch(() => undefined);
      }
      this.#stateVersion = r.VersionId;
    });
    this.#stateChain = next.catch(() => undefined);
    return next;
  }

  async #drain(): Promise<void> {
    while (this.#inflight.length > 0) await this.#settleOldest();
  }

  async commit(size: number, hashed?: string): Promise<void> {
    this.#check();
    try {
      await this.#drain();
      const total = this.#sent + this.#pendingLength;
      if (total !== size) throw new HoldfastError('HF_STORE_BAD_OFFSET', `${this.#c.what}: ${total} bytes stored, ${size} announced`);
      // The rest stays in the pending slabs (given back by #release) unless it goes as the last part.
      const rest = this.#pendingViews();
      // The digest of exactly the bytes in the parts and the rest is checked
      // before the object exists: the caller's hash (over exactly the bytes
      // written here, resumed ones from this upload's own hash state), or
      // one made here from the state after the last part and the rest, or,
      // for a one-PUT file, by the object store, which refuses a body that
      // does not hash to the payload hash it is sent under.
      if (this.#stream !== null) {
        await this.#finishStream(size);
        return;
      }
      const byObjectStore = hashed === undefined && this.#uploadId === null && this.#b.info.payloadChecked;
      let got = byObjectStore ? this.#c.digest : hashed;
      if (got === undefined) {
        const hasher = this.#parts.length > 0 ? Hasher.fromState(Buffer.from(this.#parts.at(-1)!.hash, 'base64')) : new Hasher();
        await hasher.update(rest);
        got = hasher.digest().toString('hex');
      }
      if (got !== this.#c.digest) {
        await this.discard();
        throw new HoldfastError('HF_STORE_DIGEST_MISMATCH',
          `${this.#c.what}: the ${size} bytes received hash to ${got.slice(0, 16)}…, not to the announced ${this.#c.digest.slice(0, 16)}…; the upload was discarded and will be sent again`);
      }
      // A one-PUT file whose name is its content's hash needs no look first: the PUT fails if it exists.
      const existing = this.#uploadId === null && contentAddressed(this.#c.type) ? null : await this.#b.head(this.#c.key);
      if (existing !== null) {
        await this.#sameAsExisting(existing.size, size);
        await this.#abort();
        return;
      }
      if (this.#uploadId === null) {
        try {
          // The whole file is the payload: its digest is the SigV4 payload hash, which S3 checks against what it receives.
          await this.#b.put(this.#c.key, rest, { ...this.#b.retention(), IfNoneMatch: '*' }, got);
        } catch (err) {
          await this.#onePutFailed(err, size);
          return;
        }
      } else {
        if (this.#pendingLength > 0) {
          await this.#sendPart(this.#take(this.#pendingLength), false);
          await this.#drain();
        }
        try {
          await this.#b.client.send(new CompleteMultipartUploadCommand({
            Bucket: this.#b.bucket, Key: this.#c.key, UploadId: this.#uploadId,
            MultipartUpload: { Parts: this.#parts.map((p) => ({ PartNumber: p.n, ETag: p.etag })) },
          }));
        } catch (err) {
          throw this.#b.error(`complete the upload of ${this.#c.what} in`, err);
        }
        this.#uploadId = null;
        const retention = this.#b.retention();
        if (retention.ObjectLockMode) {
          await this.#b.client.send(new PutObjectRetentionCommand({ Bucket: this.#b.bucket, Key: this.#c.key, Retention: { Mode: retention.ObjectLockMode, RetainUntilDate: retention.ObjectLockRetainUntilDate } }))
            .catch((err: unknown) => { throw this.#b.error(`set the retention of ${this.#c.what} in`, err); });
        }
        await this.#b.deleteAll(this.#c.partialKey).catch(() => undefined);
      }
      this.#c.onCommitted(size);
    } finally {
      await this.#release();
    }
  }

  /** Waits for the streamed PUT of all `size` bytes: stored, refused as not hashing to the digest, or there already. */
  async #finishStream(size: number): Promise<void> {
    try {
      await this.#stream!.done;
    } catch (err) {
      await this.#onePutFailed(err, size);
      return;
    }
    this.#c.onCommitted(size); // (its retention, if any, came with the PUT)
  }

  /**
   * After the PUT of a one-PUT file failed: bytes the object store refused
   * (HF_STORE_DIGEST_MISMATCH; the upload is discarded), or the file there
   * already (resolves when it is this one); anything else is the object
   * store's error.
   */
  async #onePutFailed(err: unknown, size: number): Promise<void> {
    if (PAYLOAD_MISMATCH.has((err as { name?: string }).name ?? '')) {
      await this.discard();
      throw new HoldfastError('HF_STORE_DIGEST_MISMATCH',
        `${this.#c.what}: the ${size} bytes received do not hash to the announced ${this.#c.digest.slice(0, 16)}… (the object store refused them); the upload was discarded and will be sent again`);
    }
    if (!preconditionFailed(err)) throw this.#b.error(`store ${this.#c.what} in`, err);
    await this.#sameAsExisting((await this.#b.head(this.#c.key))?.size ?? -1, size);
  }

  /** An object already there: fine when it is this file (content-addressed: same size; else same digest). */
  async #sameAsExisting(have: number, size: number): Promise<void> {
    let same = have === size;
    if (same && !contentAddressed(this.#c.type)) {
      const bytes = await this.#b.getBytes(this.#c.key);
      same = bytes !== null && (await sha256([bytes])).toString('hex') === this.#c.digest;
    }
    if (!same) throw new HoldfastError('HF_STORE_EXISTS', `the store holds a different ${this.#c.what}`);
  }

  async #abort(): Promise<void> {
    if (this.#c.announced !== null) return; // nothing in the bucket but what commit stored
    if (this.#uploadId !== null) {
      await this.#b.client.send(new AbortMultipartUploadCommand({ Bucket: this.#b.bucket, Key: this.#c.key, UploadId: this.#uploadId })).catch(() => undefined);
      this.#uploadId = null;
    }
    await this.#b.deleteAll(this.#c.partialKey).catch(() => undefined);
  }

  async discard(): Promise<void> {
    await Promise.allSettled(this.#inflight);
    this.#inflight = [];
    await this.#stateChain;
    await this.#abort();
    this.#parts = [];
    await this.#release();
  }

  async #release(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#stream !== null) {
      // Not all bytes arrived (or it settled already): a PUT cut short stores nothing.
      this.#stream.abort.abort();
      await this.#stream.done.catch(() => undefined);
    }
    this.#b.slabs.give(this.#pending);
    this.#pending = [];
    this.#pendingLength = 0;
    await this.#c.lease.release();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    // Parts in flight are recorded if they arrive; gathered bytes short of a part are dropped.
    while (this.#inflight.length > 0) {
      try { await this.#settleOldest(); } catch { this.#inflight = []; }
    }
    await this.#stateChain;
    await this.#release();
  }
}

