import type { FileInfo, FileType, FileWriter, SaveOptions, Storage } from './storage.ts';

export type Operation = 'save' | 'load' | 'stat' | 'list' | 'remove';

/**
 * Returns an error to inject for this call, or undefined to let it through.
 * Called once per operation, in call order.
 */
export type FaultRule = (op: Operation, type: FileType, name: string) => Error | undefined;

/** Wraps a storage and injects failures (full disk, I/O errors) for tests. */
export class FaultyStorage implements Storage {
  readonly #inner: Storage;
  readonly #rule: FaultRule;

  constructor(inner: Storage, rule: FaultRule) {
    this.#inner = inner;
    this.#rule = rule;
  }

  get location(): string {
    return this.#inner.location;
  }

  #check(op: Operation, type: FileType, name: string): void {
    const err = this.#rule(op, type, name);
    if (err) throw err;
  }

  async save(type: FileType, name: string, parts: readonly Uint8Array[], options?: SaveOptions): Promise<void> {
    this.#check('save', type, name);
    return this.#inner.save(type, name, parts, options);
  }

  async create(type: FileType): Promise<FileWriter> {
    this.#check('save', type, '');
    const inner = await this.#inner.create(type);
    return {
      write: (parts) => inner.write(parts),
      commit: async (name) => {
        const err = this.#rule('save', type, name);
        if (err) {
          await inner.abort();
          throw err;
        }
        return inner.commit(name);
      },
      abort: () => inner.abort(),
    };
  }

  async load(type: FileType, name: string, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    this.#check('load', type, name);
    return this.#inner.load(type, name, offset, length, into);
  }

  async stat(type: FileType, name: string): Promise<FileInfo> {
    this.#check('stat', type, name);
    return this.#inner.stat(type, name);
  }

  async list(type: FileType): Promise<FileInfo[]> {
    this.#check('list', type, '');
    return this.#inner.list(type);
  }

  async remove(type: FileType, name: string): Promise<void> {
    this.#check('remove', type, name);
    return this.#inner.remove(type, name);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
