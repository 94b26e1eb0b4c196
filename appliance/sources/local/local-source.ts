import { constants } from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';

import { type ScanEntry, readFile, readFiles, scandir, scandirMany } from '../../../native/index.ts';
import { errorCode } from '../../errors/index.ts';
import { type ListManyResult, type Listing, type ReadBuffers, type ReadManyResult, type Source, type SourceEntry, type SourceStat, typeOfMode } from '../source.ts';

/** Bytes per read of a large file. */
export const READ_PIECE = 1 << 20;
/** Files up to this size are read in one native call (open, read, close). */
export const SMALL_FILE = 1 << 20;

/** The local file system (and NFS mounts). Directory listings come with lstat data in one native call. */
export class LocalSource implements Source {
  readonly kind = 'local';
  readonly location = 'local';

  async stat(path: Buffer): Promise<SourceStat> {
    const st = await fsp.lstat(path, { bigint: true });
    const mode = Number(st.mode);
    return {
      type: typeOfMode(mode),
      mode: mode & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      mtime: [Number(st.mtimeNs / 1_000_000_000n), Number(st.mtimeNs % 1_000_000_000n)],
      ctime: [Number(st.ctimeNs / 1_000_000_000n), Number(st.ctimeNs % 1_000_000_000n)],
      inode: Number(st.ino),
      device: Number(st.dev),
      links: Number(st.nlink),
      rdev: Number(st.rdev),
      target: st.isSymbolicLink() ? await fsp.readlink(path, { encoding: 'buffer' }) : null,
    };
  }

  async list(dir: Buffer): Promise<Listing> {
    return toListing(await scandir(dir));
  }

  async listMany(dirs: readonly Buffer[]): Promise<ListManyResult[]> {
    return (await scandirMany(dirs)).map((r, i) => {
      if (Array.isArray(r)) return toListing(r);
      const code = errnoName(r.errno);
      return { error: Object.assign(new Error(`${code}: cannot list '${dirs[i]!.toString()}'`), { code, errno: -r.errno }) };
    });
  }

  async *read(path: Buffer, sizeHint: number, buffers?: ReadBuffers): AsyncIterable<Buffer> {
    const take = (n: number) => (buffers && n <= buffers.size ? buffers.get() : Buffer.allocUnsafe(n));
    const giveBack = (b: Buffer) => buffers?.put(b);
    if (sizeHint <= SMALL_FILE) {
      const buf = take(sizeHint);
      let n: number;
      try {
        n = await readFile(path, buf);
      } catch (err) {
        giveBack(buf);
        if (errorCode(err) !== 'EFBIG') throw err;
        n = -1; // it grew past the buffer since it was listed: stream it
      }
      if (n >= 0) {
        if (n > 0) yield buf.subarray(0, n);
        else giveBack(buf);
        return;
      }
    }
    const fh = await openForReading(path);
    try {
      // Ask for one byte more than the size when it fits: a short read is then
      // the end of a regular file, in one call.
      const piece = buffers?.size ?? READ_PIECE;
      let want = Math.min(sizeHint + 1, piece);
      for (;;) {
        const buf = take(want);
        let bytesRead: number;
        try {
          ({ bytesRead } = await fh.read(buf, 0, want, null));
        } catch (err) {
          giveBack(buf);
          throw err;
        }
        if (bytesRead === 0) {
          giveBack(buf);
          return;
        }
        yield buf.subarray(0, bytesRead);
        if (bytesRead < want) return;
        want = piece;
      }
    } finally {
      await fh.close();
    }
  }

  async readMany(paths: readonly Buffer[], sizes: readonly number[], into: Buffer): Promise<ReadManyResult[]> {
    return (await readFiles(paths, sizes, into)).map((r, i) => {
      if ('data' in r) return r;
      const code = errnoName(r.errno);
      return { error: Object.assign(new Error(`${code}: cannot read '${paths[i]!.toString()}'`), { code, errno: -r.errno }) };
    });
  }

  async close(): Promise<void> {}
}

function toListing(raw: ScanEntry[]): Listing {
  const entries: SourceEntry[] = [];
  const problems: Listing['problems'] = [];
  for (const e of raw) {
    if (e.errno !== 0) {
      problems.push({ name: e.name, error: Object.assign(new Error(`lstat failed: errno ${e.errno}`), { code: errnoName(e.errno) }) });
      continue;
    }
    entries.push({
      name: e.name,
      type: typeOfMode(e.mode),
      mode: e.mode & 0o7777,
      uid: e.uid,
      gid: e.gid,
      size: e.size,
      mtime: [e.mtimeSec, e.mtimeNsec],
      ctime: [e.ctimeSec, e.ctimeNsec],
      inode: e.ino,
      device: e.dev,
      links: e.nlink,
      rdev: e.rdev,
      target: e.target,
    });
  }
  return { entries, problems };
}

const BASE_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** O_NOATIME where allowed (owner or root), so a backup leaves atimes alone. */
async function openForReading(path: Buffer): Promise<FileHandle> {
  try {
    return await fsp.open(path, BASE_FLAGS | constants.O_NOATIME);
  } catch (err) {
    if (errorCode(err) !== 'EPERM') throw err;
    return fsp.open(path, BASE_FLAGS);
  }
}

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(os.constants.errno).map(([k, v]) => [v, k]),
);
function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `E${n}`;
}
