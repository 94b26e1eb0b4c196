import { HoldfastError, errorCode } from '../errors/index.ts';
import { REPLICATED_TYPES, type ReplicatedType } from '../protocol/index.ts';
import type { FileInfo, FileType, FileWriter, Storage } from '../storage/index.ts';
import { listRemote } from './replicator.ts';
import type { TargetClient } from './target-client.ts';

function replicated(type: FileType): type is ReplicatedType {
  return (REPLICATED_TYPES as readonly string[]).includes(type);
}

/**
 * A target's copy of the repository as a read-only Storage, so that a
 * repository can be opened, listed and restored straight from a store
 * (`holdfast restore --from-target`). Locks are kept in this process only:
 * the store holds no locks and is never written through this class.
 */
export class RemoteStorage implements Storage {
  readonly location: string;
  readonly #client: TargetClient;
  readonly #locks = new Map<string, Buffer>();

  constructor(client: TargetClient, location: string) {
    this.#client = client;
    this.location = location;
  }

  #readOnly(type: FileType, name: string): HoldfastError {
    return new HoldfastError('HF_STORE_READ_ONLY', `${this.location} is read-only here: cannot write ${type} ${name}`);
  }

  async save(type: FileType, name: string, parts: readonly Uint8Array[], options?: { exclusive?: boolean }): Promise<void> {
    if (type !== 'lock') throw this.#readOnly(type, name);
    if (options?.exclusive && this.#locks.has(name)) throw new HoldfastError('HF_STORAGE_EXISTS', `lock ${name} exists`);
    this.#locks.set(name, Buffer.concat(parts));
  }

  async create(type: FileType): Promise<FileWriter> {
    throw this.#readOnly(type, '(new file)');
  }

  #notFound(type: FileType, name: string, err: unknown): unknown {
    if (errorCode(err) === 'HF_STORE_NOT_FOUND') {
      return new HoldfastError('HF_STORAGE_NOT_FOUND', `${type} ${name} is missing from ${this.location}`, { cause: err });
    }
    return err;
  }

  async load(type: FileType, name: string, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    if (type === 'lock') {
      const b = this.#locks.get(name);
      if (!b) throw new HoldfastError('HF_STORAGE_NOT_FOUND', `lock ${name} is missing`);
      return Buffer.from(b); // the caller's own copy (see Storage.load)
    }
    if (!replicated(type)) throw new HoldfastError('HF_STORAGE_NOT_FOUND', `${type} ${name} is missing from ${this.location}`);
    try {
      const buf = await this.#client.run((c) => c.getBuffer(type, name, offset, length));
      if (into) {
        if (into.length !== buf.length) throw new HoldfastError('HF_IO', `${type} ${name}: got ${buf.length} bytes, wanted ${into.length}`);
        buf.copy(into);
        return into;
      }
      return buf;
    } catch (err) {
      throw this.#notFound(type, name, err);
    }
  }

  async stat(type: FileType, name: string): Promise<FileInfo> {
    if (type === 'lock') {
      const b = this.#locks.get(name);
      if (!b) throw new HoldfastError('HF_STORAGE_NOT_FOUND', `lock ${name} is missing`);
      return { name, size: b.length };
    }
    if (!replicated(type)) throw new HoldfastError('HF_STORAGE_NOT_FOUND', `${type} ${name} is missing from ${this.location}`);
    try {
      const r = await this.#client.run((c) => c.request({ op: 'STAT', type, name }));
      if (typeof r.size !== 'number') throw new HoldfastError('HF_PROTO_MALFORMED', 'a malformed STAT answer');
      return { name, size: r.size };
    } catch (err) {
      throw this.#notFound(type, name, err);
    }
  }

  async list(type: FileType): Promise<FileInfo[]> {
    if (type === 'lock') return [...this.#locks].map(([name, b]) => ({ name, size: b.length }));
    if (!replicated(type)) return [];
    return this.#client.run((c) => listRemote(c, type));
  }

  async remove(type: FileType, name: string): Promise<void> {
    if (type !== 'lock') throw this.#readOnly(type, name);
    this.#locks.delete(name);
  }

  async close(): Promise<void> {
    this.#client.close();
  }
}
