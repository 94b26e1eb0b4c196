import fs from 'node:fs';

import { HoldfastError } from '../errors/index.ts';
import { type Credentials, Repository } from '../repository/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { cacheRoot } from './runtime.mjs';

export interface GlobalOptions {
  repo?: string;
  passwordFile?: string;
  recoveryKeyFile?: string;
  cacheDir?: string;
  json?: boolean;
  quiet?: boolean;
}

export function readSecretFile(file: string, what: string): string {
  try {
    return fs.readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (cause) {
    throw new HoldfastError('HF_NO_PASSWORD', `cannot read the ${what} file ${file}: ${(cause as Error).message}`, { cause });
  }
}

/** The passphrase: --password-file, else HOLDFAST_PASSWORD. */
export function passphrase(o: GlobalOptions, required = true): string | null {
  const p = o.passwordFile ? readSecretFile(o.passwordFile, 'password') : process.env.HOLDFAST_PASSWORD ?? null;
  if (p === null && required) {
    throw new HoldfastError('HF_NO_PASSWORD',
      'no passphrase: set HOLDFAST_PASSWORD or pass --password-file FILE (or a recovery key: HOLDFAST_RECOVERY_KEY / --recovery-key-file)');
  }
  return p;
}

/** Passphrase or recovery key (--recovery-key-file / HOLDFAST_RECOVERY_KEY wins when given). */
export function credentials(o: GlobalOptions): Credentials {
  const recovery = o.recoveryKeyFile ? readSecretFile(o.recoveryKeyFile, 'recovery key') : process.env.HOLDFAST_RECOVERY_KEY;
  if (recovery) return { recoveryKey: recovery };
  return { password: passphrase(o)! };
}

export function repoLocation(o: GlobalOptions): string {
  const r = o.repo ?? process.env.HOLDFAST_REPO;
  if (!r) throw new HoldfastError('HF_USAGE', 'no repository: pass --repo DIR (or set HOLDFAST_REPO)');
  return r;
}

export async function openRepository(o: GlobalOptions): Promise<Repository> {
  return Repository.open(new LocalStorage(repoLocation(o)), credentials(o));
}

export function cacheDir(o: GlobalOptions): string {
  return cacheRoot(o.cacheDir);
}

/** Resolves when signal aborts (at once if it has): a service command runs until then. */
export function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
