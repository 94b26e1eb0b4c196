export { EMPTY_TREE_JSON, type NodeType, type Timespec, TreeEncoder, type TreeNode, decodeTree, displayName, encodeTree, isSafeName, sameNode } from './tree.ts';
export {
  type Snapshot, type SnapshotEntry, type SnapshotStats, decodeSnapshot, encodeSnapshot, listSnapshots, loadSnapshot,
  resolveSnapshot, saveSnapshot,
} from './snapshot.ts';
export { type Located, loadTree, locatePath, splitPath } from './tree-walk.ts';
export { type Decision, type RetentionPolicy, applyPolicy, groupKey, isEmptyPolicy } from './retention.ts';
