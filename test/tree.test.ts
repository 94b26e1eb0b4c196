// The tree blob codec: canonical bytes whether written at once or node by node.
import t from 'tap';

import type { BlobId } from '../appliance/repository/index.ts';
import { TreeEncoder, type TreeNode, decodeTree, encodeTree } from '../appliance/snapshot/index.ts';

function node(name: string | Buffer, extra: Partial<TreeNode> = {}): TreeNode {
  return {
    name: Buffer.isBuffer(name) ? name : Buffer.from(name), type: 'file', mode: 0o644, uid: 1000, gid: 1000,
    mtime: [1_700_000_000, 5], ctime: [1_700_000_001, 6], size: 3, inode: 7, device: 8, links: 1,
    content: ['ab'.repeat(32) as BlobId], ...extra,
  };
}

t.test('TreeEncoder writes encodeTree\'s bytes; encodeTree sorts; both refuse what a tree cannot hold', async (t) => {
  const nodes = [
    node('b'), node('a\nnewline'), node(Buffer.from([0x74, 0xff])), node('\u00e9t\u00e9 \u{1f680}'),
    node('dir', { type: 'dir', content: undefined, subtree: 'cd'.repeat(32) as BlobId, size: 0 }),
    node('link', { type: 'symlink', content: undefined, target: Buffer.from('../x'), size: 0 }),
    node('smb', { btime: [1, 2], attributes: 0x20 }),
  ];
  const sorted = [...nodes].sort((a, b) => Buffer.compare(a.name, b.name));
  const e = new TreeEncoder(2); // smaller than needed: the buffer grows
  for (const n of sorted) e.add(n);
  const bytes = e.finish();
  t.ok(bytes.equals(encodeTree([...nodes].reverse())), 'node by node in order equals encodeTree of any order');
  t.same(decodeTree(bytes, 'test').map((n) => n.name.toString('hex')), sorted.map((n) => n.name.toString('hex')), 'and decodes to the same names');
  t.equal(encodeTree([]).toString(), '{"nodes":[]}');

  const dup = new TreeEncoder();
  dup.add(node('a'));
  t.throws(() => dup.add(node('a')), { code: 'HF_INVALID_ARGUMENT', message: /duplicate/ });
  const order = new TreeEncoder();
  order.add(node('b'));
  t.throws(() => order.add(node('a')), { code: 'HF_INVALID_ARGUMENT', message: /out of order/ });
  t.throws(() => encodeTree([node('x'), node('x')]), { code: 'HF_INVALID_ARGUMENT' });
});
