import { createReadStream } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';

import { Metadata, type MetadataKind, type TargetFile } from '@tufjs/models';
import { BaseFetcher, Updater } from 'tuf-js';
// tuf-js tells "no newer root" from a failure only by this class (a 403/404
// on N+1.root.json); its index does not export it.
import { DownloadHTTPError, DownloadLengthMismatchError } from 'tuf-js/dist/error.js';
import { type Dispatcher, request } from 'undici';

import { HoldfastError, errorCode, ioError } from '../errors/index.ts';
import { syncDir, writeFileAtomic } from '../storage/index.ts';

/** The release channels a box can follow. */
export type ReleaseChannel = 'stable' | 'beta';

const CHANNELS: readonly ReleaseChannel[] = ['stable', 'beta'];
const RELEASE_VERSION = /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/;

/** The metadata tuf-js keeps in its directory, in the order it trusts them (and they are saved back). */
const CACHED_ROLES = ['root', 'timestamp', 'snapshot', 'targets'] as const;

/** Where find() runs tuf-js, inside cacheDir: its files replace the cached ones only after a whole refresh verified. */
const WORK_DIR = 'refresh';

export interface ReleaseFetcherOptions {
  /** Base URL of the channel's TUF metadata, e.g. `https://fleet:7600/tuf/metadata/`. */
  metadataUrl: string;
  /** Base URL of the release bundles, e.g. `https://fleet:7600/tuf/targets/`. */
  targetsUrl: string;
  /** Holds the trusted `root.json` and the other cached metadata. One ReleaseFetcher per directory. */
  cacheDir: string;
  /** Carries the vendor CA and the box's client certificate (undici's global dispatcher when absent). */
  dispatcher?: Dispatcher;
  /** root.json shipped in the provisioning file; written to cacheDir/root.json when none is there. */
  initialRoot?: Buffer;
  /** Longest wait for response headers and between body chunks, ms (default 60 s). */
  timeoutMs?: number;
}

/** A release as the verified targets metadata lists it. */
export interface ReleaseInfo {
  channel: ReleaseChannel;
  version: string;
  /** TUF target path: `<channel>/holdfast-<version>.tar.gz`. */
  path: string;
  length: number;
  sha256: string;
  /** What download() checks the bytes against (length and every hash it lists). */
  targetFile: TargetFile;
}

export interface DownloadOptions {
  signal?: AbortSignal;
  /** Called after each write with the bytes in the .part file so far and the release's length. */
  onProgress?: (bytes: number, length: number) => void;
}

/**
 * The box's side of the release channel: which releases the vendor signed
 * (TUF, via tuf-js) and their bytes, verified. It does not decide whether a
 * release should be installed (a downgrade, a staged rollout): the agent does.
 *
 * find() refreshes root → timestamp → snapshot → targets as the TUF client
 * workflow says (rollback, freeze and mix-and-match refused) in a work
 * directory and replaces the cached metadata, file by file atomically, only
 * when the whole refresh verified: a crash or a refused refresh leaves the
 * cache as it was (tuf-js itself writes its files in place).
 */
export class ReleaseFetcher {
  readonly #o: Required<Pick<ReleaseFetcherOptions, 'metadataUrl' | 'targetsUrl' | 'cacheDir' | 'timeoutMs'>> & ReleaseFetcherOptions;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: ReleaseFetcherOptions) {
    const timeoutMs = options.timeoutMs ?? 60_000;
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new HoldfastError('HF_INVALID_ARGUMENT', `timeoutMs must be a positive whole number, not ${String(options.timeoutMs)}`);
    if (typeof options.cacheDir !== 'string' || options.cacheDir === '') throw new HoldfastError('HF_INVALID_ARGUMENT', 'cacheDir is not given');
    this.#o = { ...options, metadataUrl: baseUrl(options.metadataUrl, 'metadataUrl'), targetsUrl: baseUrl(options.targetsUrl, 'targetsUrl'), timeoutMs };
  }

  /**
   * Refreshes the channel's TUF metadata and returns the release
   * `<channel>/holdfast-<version>.tar.gz`. Metadata that does not verify is
   * HF_UPDATE_METADATA (details.reason: expired, rollback, signature,
   * mismatch, malformed, invalid); a release not among the signed targets is
   * HF_UPDATE_NOT_FOUND; the fleet not answering HF_FLEET_UNREACHABLE. Calls
   * run one at a time.
   */
  async find(channel: ReleaseChannel, version: string): Promise<ReleaseInfo> {
    if (!CHANNELS.includes(channel)) throw new HoldfastError('HF_INVALID_ARGUMENT', `channel ${JSON.stringify(channel)} is not one of ${CHANNELS.join(', ')}`);
    if (typeof version !== 'string' || !RELEASE_VERSION.test(version)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `release version ${JSON.stringify(version)} is not MAJOR.MINOR.PATCH[-prerelease]`);
    }
    const run = this.#queue.catch(() => undefined).then(() => this.#find(channel, version));
    this.#queue = run;
    return run;
  }

  /**
   * Downloads a release to destFile, resumably: bytes go to
   * `destFile.part`; when one is there the request asks for the rest
   * (`Range: bytes=N-`), and starts over when the server answers 200. The
   * URL is the consistent-snapshot name `<targetsUrl><dir>/<sha256>.<name>`.
   *
   * More bytes than the signed length is HF_UPDATE_VERIFY at once (reading
   * stops, nothing beyond the length is written); at the end length and every
   * hash are checked, and a mismatch is HF_UPDATE_VERIFY with the .part
   * deleted. Only verified bytes are renamed (after fsync) to destFile. A
   * connection lost half-way is HF_FLEET_UNREACHABLE (HF_INTERRUPTED when
   * `signal` aborted) and keeps the .part for the next call.
   */
  async download(info: ReleaseInfo, destFile: string, opts: DownloadOptions = {}): Promise<void> {
    const sha256 = info.targetFile?.hashes?.sha256;
    if (!sha256 || sha256 !== info.sha256 || info.targetFile.length !== info.length || info.targetFile.path !== info.path) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `release info for ${info.path} does not match its target file: pass what find() returned`);
    }
    const part = `${destFile}.part`;
    const url = this.#targetUrl(info);
    let have = await sizeOf(part);
    if (have > info.length) {
      await unlinkIfThere(part);
      have = 0;
    }
    if (have < info.length) have = await this.#fetchInto(url, part, have, info, opts, true);
    if (have < info.length) {
      throw new HoldfastError('HF_FLEET_UNREACHABLE',
        `${url} ended after ${have} of the ${info.length} bytes of ${info.path}; ${part} is kept and the next download resumes there`);
    }
    try {
      await info.targetFile.verify(createReadStream(part));
    } catch (err) {
      await unlinkIfThere(part);
      throw new HoldfastError('HF_UPDATE_VERIFY',
        `release ${info.path} from ${url} does not match its signed length and hashes (${(err as Error).message}): ${part} deleted, nothing installed`,
        { cause: err });
    }
    try {
      await fsp.rename(part, destFile);
      await syncDir(path.dirname(destFile));
    } catch (err) {
      throw ioError(`cannot move the verified release ${info.path} to ${destFile}`, err);
    }
  }

  async #find(channel: ReleaseChannel, version: string): Promise<ReleaseInfo> {
    const targetPath = `${channel}/holdfast-${version}.tar.gz`;
    const { cacheDir } = this.#o;
    await this.#ensureRoot();
    const work = path.join(cacheDir, WORK_DIR);
    try {
      await fsp.rm(work, { recursive: true, force: true });
      await fsp.mkdir(work, { mode: 0o700 });
      for (const role of CACHED_ROLES) {
        await fsp.copyFile(path.join(cacheDir, `${role}.json`), path.join(work, `${role}.json`)).catch((err: unknown) => {
          if (errorCode(err) !== 'ENOENT') throw err;
        });
      }
    } catch (err) {
      throw ioError(`cannot prepare ${work} for the release metadata`, err);
    }
    try {
      const fetcher = new UndiciFetcher(this.#o.dispatcher, this.#o.timeoutMs);
      let target: TargetFile | undefined;
      try {
        const updater = new Updater({ metadataDir: work, metadataBaseUrl: this.#o.metadataUrl, targetBaseUrl: this.#o.targetsUrl, fetcher });
        await updater.refresh();
        target = await updater.getTargetInfo(targetPath);
      } catch (err) {
        throw metadataError(err, fetcher, this.#o.metadataUrl);
      }
      // The whole refresh verified: it becomes the trusted state, found or not.
      for (const role of CACHED_ROLES) await this.#save(work, role);
      if (!target) {
        throw new HoldfastError('HF_UPDATE_NOT_FOUND', `release ${version} is not among the signed targets of channel ${channel} (${targetPath} at ${this.#o.metadataUrl})`);
      }
      const sha256 = target.hashes.sha256;
      const custom = target.custom;
      if (!sha256 || !/^[0-9a-f]{64}$/.test(sha256)) {
        throw new HoldfastError('HF_UPDATE_METADATA', `signed target ${targetPath} carries no sha256`, { details: { reason: 'invalid' } });
      }
      if ((custom.channel !== undefined && custom.channel !== channel) || (custom.version !== undefined && custom.version !== version)) {
        throw new HoldfastError('HF_UPDATE_METADATA',
          `signed target ${targetPath} says it is ${String(custom.channel)} ${String(custom.version)}`, { details: { reason: 'invalid' } });
      }
      return { channel, version, path: targetPath, length: target.length, sha256, targetFile: target };
    } finally {
      await fsp.rm(work, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** Writes initialRoot as the trusted root when the cache has none, after checking it signs itself. */
  async #ensureRoot(): Promise<void> {
    const file = path.join(this.#o.cacheDir, 'root.json');
    if ((await sizeOf(file, -1)) >= 0) return;
    const initial = this.#o.initialRoot;
    if (!initial) {
      throw new HoldfastError('HF_UPDATE_METADATA',
        `there is no trusted root.json in ${this.#o.cacheDir} and no initial root was given: restore it from the provisioning file`,
        { details: { reason: 'invalid' } });
    }
    try {
      const root = Metadata.fromJSON('root' as MetadataKind.Root, JSON.parse(initial.toString('utf8')) as Parameters<typeof Metadata.fromJSON>[1]);
      root.verifyDelegate('root', root);
    } catch (err) {
      throw new HoldfastError('HF_UPDATE_METADATA', `the initial root.json is not root metadata signed by its own keys: ${(err as Error).message}`,
        { cause: err, details: { reason: 'invalid' } });
    }
    await fsp.mkdir(this.#o.cacheDir, { recursive: true, mode: 0o700 }).catch((err: unknown) => { throw ioError(`cannot create ${this.#o.cacheDir}`, err); });
    await writeFileAtomic(file, initial, { mode: 0o600, exclusive: false });
  }

  /** Copies role.json from the work directory into the cache when it changed (temp → fsync → rename → fsync dir). */
  async #save(work: string, role: string): Promise<void> {
    const from = path.join(work, `${role}.json`);
    const to = path.join(this.#o.cacheDir, `${role}.json`);
    let bytes: Buffer;
    try {
      bytes = await fsp.readFile(from);
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return;
      throw ioError(`cannot read ${from}`, err);
    }
    const old = await fsp.readFile(to).catch(() => null);
    if (old && old.equals(bytes)) return;
    await writeFileAtomic(to, bytes, { mode: 0o600, exclusive: false });
  }

  #targetUrl(info: ReleaseInfo): string {
    const segments = info.path.split('/');
    const base = segments.pop() ?? '';
    if (segments.some((s) => s === '' || s === '.' || s === '..') || base === '') {
      throw new HoldfastError('HF_UPDATE_METADATA', `signed target path ${JSON.stringify(info.path)} is not a plain relative path`, { details: { reason: 'invalid' } });
    }
    return new URL([...segments, `${info.sha256}.${base}`].map(encodeURIComponent).join('/'), this.#o.targetsUrl).toString();
  }

  /** One request for the bytes from `offset` on, appended to `part`. Returns how many bytes `part` holds. */
  async #fetchInto(url: string, part: string, offset: number, info: ReleaseInfo, opts: DownloadOptions, mayRestart: boolean): Promise<number> {
    const { signal, onProgress } = opts;
    const cut = (err: unknown, have: number) => signal?.aborted
      ? new HoldfastError('HF_INTERRUPTED', `download of ${info.path} was cancelled after ${have} of ${info.length} bytes; ${part} is kept`, { cause: err })
      : new HoldfastError('HF_FLEET_UNREACHABLE',
        `download of ${info.path} from ${url} was cut off after ${have} of ${info.length} bytes (${(err as Error)?.message ?? String(err)}); ` +
        `${part} is kept and the next download resumes there`, { cause: err });
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, {
        method: 'GET',
        headers: offset > 0 ? { range: `bytes=${offset}-` } : {},
        dispatcher: this.#o.dispatcher,
        signal,
        headersTimeout: this.#o.timeoutMs,
        bodyTimeout: this.#o.timeoutMs,
      });
    } catch (err) {
      throw cut(err, offset);
    }

    let start: number;
    if (res.statusCode === 206 && offset > 0) {
      const range = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
      if (!range || Number(range[1]) !== offset) {
        discard(res.body);
        throw new HoldfastError('HF_FLEET_UNREACHABLE', `${url} answered a request for bytes ${offset}- with range ${String(res.headers['content-range'])}`);
      }
      start = offset;
    } else if (res.statusCode === 200) {
      start = 0; // the server ignored Range: start over
    } else if (res.statusCode === 416 && offset > 0 && mayRestart) {
      discard(res.body);
      await unlinkIfThere(part);
      return this.#fetchInto(url, part, 0, info, opts, false);
    } else {
      discard(res.body);
      throw new HoldfastError('HF_FLEET_UNREACHABLE', `${url} answered HTTP ${res.statusCode} for release ${info.path}`);
    }

    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(part, start === 0 ? 'w' : 'a', 0o600);
    } catch (err) {
      discard(res.body);
      throw ioError(`cannot open ${part}`, err);
    }
    let have = start;
    let failure: HoldfastError | undefined;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        if (have + chunk.length > info.length) {
          failure = new HoldfastError('HF_UPDATE_VERIFY',
            `${url} sent more than the ${info.length} bytes the signed targets metadata gives ${info.path}: reading stopped, ${part} deleted, nothing installed`);
          break;
        }
        try {
          await fh.write(chunk);
        } catch (err) {
          failure = ioError(`cannot write ${part}`, err);
          break;
        }
        have += chunk.length;
        onProgress?.(have, info.length);
      }
    } catch (err) {
      failure = cut(err, have);
    } finally {
      discard(res.body);
      await fh.sync().catch(() => undefined);
      await fh.close().catch(() => undefined);
    }
    if (failure) {
      if (failure.code === 'HF_UPDATE_VERIFY') await unlinkIfThere(part);
      throw failure;
    }
    return have;
  }
}

/** tuf-js's fetcher over undici's request(), so the fleet's TLS (vendor CA, client certificate) applies. */
class UndiciFetcher extends BaseFetcher {
  readonly #dispatcher: Dispatcher | undefined;
  readonly #timeoutMs: number;
  /** The last request that failed, as the coded error to report: tuf-js keeps only the message of some. */
  failure: { url: string; error: HoldfastError } | undefined;

  constructor(dispatcher: Dispatcher | undefined, timeoutMs: number) {
    super();
    this.#dispatcher = dispatcher;
    this.#timeoutMs = timeoutMs;
  }

  override async fetch(url: string): Promise<ReadableStream<Uint8Array<ArrayBuffer>>> {
    return Readable.toWeb(await this.#open(url)) as ReadableStream<Uint8Array<ArrayBuffer>>;
  }

  /** Metadata into memory, stopping at maxLength (BaseFetcher's goes through a temp file and leaves the body open). */
  override async downloadBytes(url: string, maxLength: number): Promise<Buffer> {
    const body = await this.#open(url);
    const chunks: Buffer[] = [];
    let length = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        length += chunk.length;
        if (length > maxLength) throw new DownloadLengthMismatchError(`${url} is longer than the ${maxLength} bytes allowed`);
        chunks.push(chunk);
      }
    } catch (err) {
      if (err instanceof DownloadLengthMismatchError) throw err;
      throw this.#fail(url, new HoldfastError('HF_FLEET_UNREACHABLE', `${url} was cut off: ${(err as Error).message}`, { cause: err }));
    } finally {
      discard(body);
    }
    return Buffer.concat(chunks);
  }

  async #open(url: string): Promise<Dispatcher.ResponseData['body']> {
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { method: 'GET', dispatcher: this.#dispatcher, headersTimeout: this.#timeoutMs, bodyTimeout: this.#timeoutMs });
    } catch (err) {
      throw this.#fail(url, new HoldfastError('HF_FLEET_UNREACHABLE', `cannot fetch ${url}: ${(err as Error).message}`, { cause: err }));
    }
    if (res.statusCode < 200 || res.statusCode > 299) {
      discard(res.body);
      // N+1.root.json answering 404 (or 403) is how tuf-js learns it has the newest root.
      const error = new DownloadHTTPError(`${url} answered HTTP ${res.statusCode}`, res.statusCode);
      this.#fail(url, new HoldfastError('HF_FLEET_UNREACHABLE', error.message, { cause: error }));
      throw error;
    }
    return res.body;
  }

  #fail(url: string, error: HoldfastError): HoldfastError {
    this.failure = { url, error };
    return error;
  }
}

/** Why tuf-js refused, in words an admin can act on, from its messages (it wraps some errors into a string). */
const REASONS: readonly { reason: string; test: RegExp; say: string }[] = [
  { reason: 'expired', test: /expired/i, say: 'it has expired: the release server stopped refreshing it, or old metadata is being replayed (freeze attack)' },
  { reason: 'rollback', test: /less than current/i, say: 'it is older than metadata this box has already seen (rollback attack)' },
  { reason: 'signature', test: /signed by \d+\/\d+ keys|signature/i, say: 'it is not signed by enough trusted keys (below the threshold, or a bad signature)' },
  {
    reason: 'mismatch',
    test: /expected (length|hash|version)|does(n't| not) match|longer than|max length/i,
    say: 'its length, hash or version disagrees with what the metadata above it says (mix-and-match, or a damaged file)',
  },
  { reason: 'malformed', test: /JSON|must be|is not defined|expected '/i, say: 'it is malformed' },
];

function metadataError(err: unknown, fetcher: UndiciFetcher, metadataUrl: string): HoldfastError {
  if (err instanceof HoldfastError) return err;
  const text = err instanceof Error ? err.message : String(err);
  const failed = fetcher.failure;
  if (failed && (err instanceof DownloadHTTPError || text.includes(failed.url))) return failed.error;
  const found = REASONS.find((r) => r.test.test(text));
  return new HoldfastError('HF_UPDATE_METADATA',
    `release channel metadata at ${metadataUrl} refused: ${found?.say ?? 'it does not verify'} (${text}); nothing was trusted or installed`,
    { cause: err, details: { reason: found?.reason ?? 'invalid' } });
}

function baseUrl(value: unknown, what: string): string {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch (err) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `${what} ${JSON.stringify(value)} is not a URL`, { cause: err });
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new HoldfastError('HF_INVALID_ARGUMENT', `${what} ${url.href} is not http(s)`);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url.toString();
}

/** Drops a response body (it may still be arriving): undici reports the abort as an error event, which must not go unhandled. */
function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => undefined);
  body.destroy();
}

async function sizeOf(file: string, missing = 0): Promise<number> {
  try {
    return (await fsp.stat(file)).size;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return missing;
    throw ioError(`cannot read ${file}`, err);
  }
}

async function unlinkIfThere(file: string): Promise<void> {
  await fsp.unlink(file).catch((err: unknown) => {
    if (errorCode(err) !== 'ENOENT') throw ioError(`cannot delete ${file}`, err);
  });
}

