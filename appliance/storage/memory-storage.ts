import { HoldfastError } from '../errors/index.ts';
import { type FileInfo, type FileType, type FileWriter, type SaveOptions, type Storage, validName } from './storage.ts';

/** In-memory storage for tests: the same contract, no durability. */
export class MemoryStorage implements Storage {
  readonly location: string;
  readonly #files = new Map<string, Buffer>();

  constructor(location = 'memory:') {
    this.location = location;
  }

  #key(type: FileType, name: string): string {
    if (!validName(type, name)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `invalid ${type} file name ${JSON.stringify(name)}`);
    }
    return `${type}/${name}`;
  }

  async save(type: FileType, name: string, parts: readonly Uint8Array[], options: SaveOptions = {}): Promise<void> {
    const k = this.#key(type, name);
    if (options.exclusive && this.#files.has(k)) {
      throw new HoldfastError('HF_STORAGE_EXISTS', `${type} ${name} already exists`);
    }
    this.#files.set(k, Buffer.concat(parts));
  }

  async create(type: FileType): Promise<FileWriter> {
    const parts: Buffer[] = [];
    return {
      write: async (p) => { parts.push(...p.map((x) => Buffer.from(x))); },
      commit: (name) => this.save(type, name, parts),
      abort: async () => { parts.length = 0; },
    };
  }

  async load(type: FileType, name: string, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    const data = this.#files.get(this.#key(type, name));
    if (!data) throw new HoldfastError('HF_STORAGE_NOT_FOUND', `${type} ${name} is missing from ${this.location}`);
    if (offset === undefined) return Buffer.from(data);
    const end = length === undefined ? data.length : offset + length;
    if (end > data.length) {
      throw new HoldfastError('HF_IO', `${type} ${name}: wanted bytes up to ${end}, the file ends at ${data.length}`);
    }
    if (into) {
      data.copy(into, 0, offset, end);
      return into;
    }
    return Buffer.from(data.subarray(offset, end));
  }

  async stat(type: FileType, name: string): Promise<FileInfo> {
    const data = this.#files.get(this.#key(type, name));
    if (!data) throw new HoldfastError('HF_STORAGE_NOT_FOUND', `${type} ${name} is missing from ${this.location}`);
    return { name, size: data.length };
  }

  async list(type: FileType): Promise<FileInfo[]> {
    const out: FileInfo[] = [];
    for (const [k, v] of this.#files) {
      if (k.startsWith(`${type}/`)) out.push({ name: k.slice(type.length + 1), size: v.length });
    }
    return out;
  }

  async remove(type: FileType, name: string): Promise<void> {
    this.#files.delete(this.#key(type, name));
  }

  async close(): Promise<void> {}
}
