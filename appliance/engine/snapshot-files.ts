import { Readable } from 'node:stream';

import yazl from 'yazl';

import { HoldfastError } from '../errors/index.ts';
import type { BlobId, Repository } from '../repository/index.ts';
import { type TreeNode, displayName, isSafeName, loadTree, locatePath } from '../snapshot/index.ts';

/**
 * A path inside a snapshot as the API takes it: absolute, '/'-separated,
 * with no "..", NUL or empty component (HF_INVALID_ARGUMENT otherwise), so
 * that no request names anything outside the snapshot's tree, or outside a
 * restore target.
 */
export function snapshotPath(p: unknown, what = 'path'): string {
  if (typeof p !== 'string' || !p.startsWith('/') || p.includes('\0')) {
    throw new HoldfastError('HF_INVALID_ARGUMENT', `the ${what} must be an absolute path in the snapshot, such as /srv/data/report.pdf`);
  }
  const parts = p.split('/').filter((s) => s.length > 0 && s !== '.');
  if (parts.some((s) => s === '..')) throw new HoldfastError('HF_INVALID_ARGUMENT', `the ${what} ${JSON.stringify(p)} contains "..": name the path itself`);
  return `/${parts.join('/')}`;
}

/** A file's bytes, chunk by chunk, each checked against its id. */
export function fileStream(repo: Repository, node: TreeNode): Readable {
  const content = node.content ?? [];
  return Readable.from((async function* chunks() {
    for (const id of content) yield await repo.loadBlob(id);
  })(), { objectMode: false });
}

/** The node at a path of a snapshot (HF_PATH_NOT_FOUND when absent; the root is not a file). */
export async function nodeAt(repo: Repository, root: BlobId, p: string): Promise<TreeNode> {
  const at = await locatePath(repo, root, p);
  if (!at.node) throw new HoldfastError('HF_PATH_NOT_FOUND', 'the snapshot root is a directory; name a path in it');
  return at.node;
}

/** Entries being added to a zip that it has not started reading; the walk waits beyond this. */
const ZIP_AHEAD = 64;

/**
 * A directory of a snapshot as a zip, streamed as it is written (ZIP64 where
 * needed): the tree is walked as the zip is read, never more than ZIP_AHEAD
 * files ahead of it, so a folder of any size costs bounded memory. Names
 * that could not be created on extraction (see isSafeName) are left out;
 * symlinks, devices and FIFOs are left out too (a zip has no portable
 * form for them). Errors reading the repository end the stream with the error.
 */
export function zipStream(repo: Repository, dir: TreeNode, base: string): Readable {
  const zip = new yazl.ZipFile();
  const out = new Readable({ read() {} });
  let pending = 0;
  let wake: (() => void) | null = null;
  const started = () => {
    pending--;
    wake?.();
    wake = null;
  };
  const walk = async (tree: BlobId, prefix: string): Promise<void> => {
    for (const n of await loadTree(repo, tree)) {
      if (!isSafeName(n.name)) continue;
      const name = `${prefix}${displayName(n.name)}`;
      const mtime = new Date(n.mtime[0] * 1000 + Math.floor(n.mtime[1] / 1e6));
      if (n.type === 'dir') {
        zip.addEmptyDirectory(name, { mtime, mode: 0o40000 | (n.mode & 0o7777) });
        await walk(n.subtree!, `${name}/`);
      } else if (n.type === 'file') {
        while (pending >= ZIP_AHEAD) await new Promise<void>((resolve) => { wake = resolve; });
        pending++;
        zip.addReadStreamLazy(name, { mtime, mode: 0o100000 | (n.mode & 0o7777), size: n.size }, (cb) => {
          started();
          cb(null, fileStream(repo, n));
        });
      }
    }
  };
  zip.outputStream.on('data', (b: Buffer) => { if (!out.push(b)) zip.outputStream.pause(); });
  out._read = () => { zip.outputStream.resume(); };
  zip.outputStream.on('end', () => out.push(null));
  zip.on('error', (err: Error) => out.destroy(err));
  zip.outputStream.on('error', (err: Error) => out.destroy(err));
  const top = base ? `${base}/` : '';
  walk(dir.subtree!, top).then(() => zip.end(), (err: unknown) => out.destroy(err as Error));
  return out;
}
