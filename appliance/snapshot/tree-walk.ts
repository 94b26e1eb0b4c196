import { release } from '../../native/index.ts';
import { HoldfastError } from '../errors/index.ts';
import { type BlobId, type Repository, shortId } from '../repository/index.ts';
import { type TreeNode, decodeTree, displayName } from './tree.ts';

/** Loads and decodes a tree blob (its bytes are freed at once: the nodes hold copies). */
export async function loadTree(repo: Repository, id: BlobId): Promise<TreeNode[]> {
  const plain = await repo.loadBlob(id);
  try {
    return decodeTree(plain, `tree ${shortId(id)}`);
  } finally {
    release(plain);
  }
}

/** Splits an absolute snapshot path into name components ("/" gives none). */
export function splitPath(p: string): Buffer[] {
  return p.split('/').filter((s) => s.length > 0 && s !== '.').map((s) => Buffer.from(s, 'utf8'));
}

export interface Located {
  /** The node, or null for the snapshot root. */
  node: TreeNode | null;
  /** The tree listing this path (a directory's subtree, or the root). */
  tree: BlobId | null;
}

/** Follows a path from the root tree; HF_PATH_NOT_FOUND when it is not there. */
export async function locatePath(repo: Repository, root: BlobId, path: string): Promise<Located> {
  let tree: BlobId = root;
  let node: TreeNode | null = null;
  const parts = splitPath(path);
  for (let i = 0; i < parts.length; i++) {
    const nodes = await loadTree(repo, tree);
    const found = nodes.find((n) => n.name.equals(parts[i]!));
    if (!found) {
      throw new HoldfastError('HF_PATH_NOT_FOUND',
        `${path} is not in the snapshot (no ${JSON.stringify(displayName(parts[i]!))} in /${parts.slice(0, i).map(displayName).join('/')}); ` +
        'list the snapshot with `holdfast ls`');
    }
    node = found;
    if (i < parts.length - 1 && found.type !== 'dir') {
      throw new HoldfastError('HF_PATH_NOT_FOUND', `${path} is not in the snapshot (${displayName(found.name)} is not a directory)`);
    }
    if (found.type === 'dir') tree = found.subtree!;
  }
  return { node, tree: node === null || node.type === 'dir' ? tree : null };
}
