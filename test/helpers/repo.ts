import { type PackId, type Repository, readPackHeader } from '../../appliance/repository/index.ts';

/**
 * Blob ids stored in more than one pack, read from the packs' own headers
 * (not the index): proof that nothing was stored twice.
 */
export async function duplicateBlobs(repo: Repository): Promise<string[]> {
  const seen = new Map<string, PackId>();
  const dups: string[] = [];
  for (const p of await repo.storage.list('pack')) {
    for (const e of await readPackHeader(repo.storage, repo.sealer, p.name as PackId, p.size)) {
      if (seen.has(e.id)) dups.push(e.id);
      else seen.set(e.id, p.name as PackId);
    }
  }
  return dups;
}
