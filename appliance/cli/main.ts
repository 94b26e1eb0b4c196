import path from 'node:path';

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';

import { type BackupWarning, PROGRAM, backup } from '../backup/index.ts';
import type { Catalog } from '../catalog/index.ts';
import { HoldfastError, errorCode } from '../errors/index.ts';
import { check, forget, prune } from '../maintenance/index.ts';
import { Repository, removeLocks, shortId } from '../repository/index.ts';
import { restore } from '../restore/index.ts';
import { type RetentionPolicy, type SnapshotEntry, listSnapshots, resolveSnapshot } from '../snapshot/index.ts';
import { type SourceCredentials, type SourceSpec, openSource, parseSourceArgs } from '../sources/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { type GlobalOptions, cacheDir, openRepository, passphrase, readSecretFile, repoLocation } from './context.ts';
import { registerEscrowCommands } from './escrow-commands.ts';
import { Output, bytes, duration, modeString, printable, time } from './output.ts';
import { registerAgentCommands } from './agent-commands.ts';
import { openFromTarget, registerReplicationCommands } from './replication-commands.ts';
import { registerConsoleCommands, registerServiceCommands } from './service-commands.ts';

/**
 * Exit status: 0 done; 1 failed (a coded error, or check found damage);
 * 2 wrong usage; 3 done with warnings (files that could not be read or
 * restored); 130 interrupted.
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, warnings: 3, interrupted: 130 } as const;

function count(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a whole number');
  return n;
}

function percent(value: string): number {
  const m = /^(\d+(?:\.\d+)?)%$/.exec(value);
  const n = m ? Number(m[1]) : NaN;
  if (!(n > 0 && n <= 100)) throw new InvalidArgumentError('expected a percentage such as 10%');
  return n / 100;
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Runs the CLI; resolves with the exit status. */
export async function main(argv: string[]): Promise<number> {
  // `holdfast ls … | head`: once the reader is gone, stop quietly, as grep does.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT.ok);
    throw err;
  });
  let status: number = EXIT.ok;
  let out = new Output({});
  const abort = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    interrupts++;
    if (interrupts > 1) process.exit(EXIT.interrupted);
    out.note('interrupted: stopping (what is stored is kept; press Ctrl-C again to quit at once)');
    abort.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const program = new Command('holdfast')
    .description('Holdfast: encrypted, deduplicated backups')
    .version(PROGRAM.split(' ')[1]!, '--version')
    .option('--repo <dir>', 'repository directory (or HOLDFAST_REPO)')
    .option('--password-file <file>', 'read the passphrase from a file (else HOLDFAST_PASSWORD)')
    .option('--recovery-key-file <file>', 'open with the recovery key in a file (or HOLDFAST_RECOVERY_KEY)')
    .option('--cache-dir <dir>', 'local cache for the catalog (or HOLDFAST_CACHE_DIR)')
    .option('--json', 'machine-readable output: the last line of stdout is one JSON object')
    .option('-q, --quiet', 'no progress or notes')
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  /** Wraps a command: output, errors and exit status. */
  const action = <A extends unknown[]>(fn: (g: GlobalOptions, ...args: A) => Promise<number | void>) =>
    async (...args: A) => {
      const g = program.opts<GlobalOptions>();
      out = new Output(g);
      try {
        status = (await fn(g, ...args)) ?? EXIT.ok;
      } catch (err) {
        out.error(err);
        status = errorCode(err) === 'HF_INTERRUPTED' ? EXIT.interrupted : errorCode(err) === 'HF_USAGE' ? EXIT.usage : EXIT.failed;
      } finally {
        out.stopProgress();
      }
    };

  /** Opens the repository for the length of fn, closing it however fn ends. */
  const withRepository = async <T>(g: GlobalOptions, fn: (repo: Repository) => Promise<T>, open?: () => Promise<Repository>): Promise<T> => {
    const repo = await (open ?? (() => openRepository(g)))();
    try {
      return await fn(repo);
    } finally {
      await repo.close();
    }
  };

  program.command('init')
    .description('create a repository; prints the recovery key once')
    .action(action(async (g) => {
      const location = repoLocation(g);
      const { repo, recoveryKey } = await Repository.init(new LocalStorage(location), passphrase(g)!);
      await repo.close();
      out.result({ repository: path.resolve(location), id: repo.id, recoveryKey });
      out.line(`created repository ${repo.id.slice(0, 8)} at ${path.resolve(location)}`);
      out.line('');
      out.line('Recovery key (shown only now; keep it offline, it opens the repository if the passphrase is lost):');
      out.line(`  ${recoveryKey}`);
    }));

  program.command('backup')
    .description('back up paths (local, or smb:// or sftp:// URLs of one server) into a new snapshot')
    .argument('<paths...>', 'local files or directories, or smb://[DOMAIN;]USER@HOST[:PORT]/SHARE[/PATH], or sftp://USER@HOST[:PORT]/PATH')
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect)
    .option('--host <name>', 'host name to record (default: this machine, or the server of a URL)')
    .option('--parent <snapshot>', 'compare against this snapshot instead of the latest of the same host, source and paths')
    .option('--force', 'read every file, even those unchanged since the parent')
    .option('--source-password-file <file>', 'SMB: read the password from a file (else HOLDFAST_SOURCE_PASSWORD)')
    .option('--source-snapshot <when>', 'SMB: read the share\'s previous version: "latest" or the newest at or before a time (ISO 8601)')
    .option('--identity <keyfile>', 'SFTP: private key file')
    .option('--known-hosts <file>', 'SFTP: pin the server\'s host key with this known_hosts file')
    .option('--host-key <fingerprint>', 'SFTP: pin the server\'s host key: SHA256:… as `ssh-keygen -lf` prints it')
    .action(action(async (g, args: string[], o: BackupFlags) => {
      const spec = parseSourceArgs(args, process.cwd());
      const creds = sourceCredentials(spec, o);
      return withRepository(g, async (repo) => {
        const source = await openSource(spec, creds);
        try {
          let parent;
          if (o.parent) parent = resolveSnapshot((await listSnapshots(repo)).snapshots, o.parent).id;
          let live: { archive: { files: number; bytesRead: number }; writer: { bytesAdded: number } } | null = null;
          const started = performance.now();
          out.startProgress(() => {
            if (!live) return 'starting…';
            const s = (performance.now() - started) / 1000;
            return `${duration(s)}  ${live.archive.files} files  ${bytes(live.archive.bytesRead)} read  ` +
              `${bytes(live.writer.bytesAdded)} added  ${bytes(live.archive.bytesRead / Math.max(s, 0.001))}/s`;
          });
          const host = o.host ?? (spec.kind === 'local' ? undefined : spec.host);
          const r = await backup(repo, source, {
            paths: spec.paths,
            tags: o.tag ?? [],
            force: o.force ?? false,
            signal: abort.signal,
            onWarning: (w: BackupWarning) => out.warn(`${printable(w.path)}: ${w.message} [${w.code}]`),
            onStart: (l) => { live = l; },
            command: 'holdfast backup',
            ...(host ? { host } : {}),
            ...(parent ? { parent } : {}),
          });
          out.stopProgress();
          const st = r.snapshot.stats;
          if (r.adopted.packs > 0) out.note(`took in ${r.adopted.packs} pack(s) (${r.adopted.blobs} blobs) left by an interrupted backup`);
          out.line(`snapshot ${shortId(r.id)} saved: ${st.files} files, ${st.dirs} directories; ` +
            `${st.filesRead} read, ${st.filesUnchanged} unchanged; ${bytes(st.bytesRead)} read, ${bytes(st.bytesAdded)} added ` +
            `in ${duration(st.seconds)}${r.warnings.length ? `; ${r.warnings.length} warning(s)` : ''}`);
          out.result({
            snapshot: r.id, short: shortId(r.id), parent: r.snapshot.parent, ...st,
            warningList: r.warnings.slice(0, 100),
          });
          return r.warnings.length > 0 ? EXIT.warnings : EXIT.ok;
        } finally {
          await source.close();
        }
      });
    }));

  program.command('snapshots')
    .description('list snapshots, oldest first')
    .action(action(async (g) => {
      return withRepository(g, async (repo) => {
        const { snapshots, damaged } = await listSnapshots(repo);
        for (const d of damaged) out.warn(`snapshot ${shortId(d.id)} is unreadable: ${d.error.message}`);
        out.result(snapshots.map((s) => ({ id: s.id, short: shortId(s.id), ...s.snapshot })));
        for (const s of snapshots) {
          const sn = s.snapshot;
          out.line(`${shortId(s.id)}  ${time(sn.time)}  ${sn.host}  ${sn.paths.join(', ')}` +
            `${sn.tags.length ? `  [${sn.tags.join(', ')}]` : ''}  ${sn.stats.files} files, ${bytes(sn.stats.bytes)}`);
        }
        if (snapshots.length === 0) out.line('no snapshots yet');
        return damaged.length > 0 ? EXIT.failed : EXIT.ok;
      });
    }));

  const withCatalog = <T>(g: GlobalOptions, fn: (repo: Repository, catalog: Catalog, snaps: SnapshotEntry[]) => Promise<T>): Promise<T> =>
    withRepository(g, async (repo) => {
      const lock = await repo.lock('shared', 'holdfast catalog');
      let catalog: Catalog | null = null;
      try {
        await repo.loadIndex();
        // the catalog (and SQLite) is loaded by the commands that use it only
        const { Catalog } = await import('../catalog/index.ts');
        catalog = await Catalog.open(cacheDir(g), repo.id);
        for (const d of (await catalog.sync(repo)).damaged) out.warn(`snapshot ${shortId(d.id)} is left out of the catalog: ${d.error}`);
        const { snapshots } = await listSnapshots(repo);
        return await fn(repo, catalog, snapshots);
      } finally {
        await catalog?.close();
        await lock.release();
      }
    });

  program.command('ls')
    .description('list a directory of a snapshot ("latest" or an id prefix)')
    .argument('<snapshot>')
    .argument('[path]', 'absolute path in the snapshot', '/')
    .option('-r, --recursive', 'list everything below the path')
    .option('-l, --long', 'mode, size and time too')
    .action(action(async (g, ref: string, p: string, o: { recursive?: boolean; long?: boolean }) => {
      await withCatalog(g, async (_repo, catalog, snaps) => {
        const s = resolveSnapshot(snaps, ref);
        const entries = await catalog.list(s.id, p, o.recursive ?? false);
        out.result({ snapshot: s.id, path: p, entries });
        for (const e of entries) {
          out.line(o.long
            ? `${modeString(e.type, e.mode)} ${String(e.size).padStart(12)} ${time(new Date(e.mtime[0] * 1000).toISOString())} ${printable(e.path)}`
            : `${printable(e.path)}${e.type === 'dir' ? '/' : ''}`);
        }
      });
    }));

  program.command('find')
    .description('find files by name (glob: * ? [..]) in every snapshot')
    .argument('<pattern>')
    .option('-i, --ignore-case', 'case-insensitive')
    .option('--snapshot <snapshot>', 'search one snapshot only')
    .action(action(async (g, pattern: string, o: { ignoreCase?: boolean; snapshot?: string }) => {
      await withCatalog(g, async (_repo, catalog, snaps) => {
        const only = o.snapshot ? resolveSnapshot(snaps, o.snapshot).id : undefined;
        const matches = await catalog.find(pattern, { ignoreCase: o.ignoreCase ?? false, ...(only ? { snapshot: only } : {}) });
        out.result({ pattern, matches });
        let last = '';
        for (const m of matches) {
          if (m.path !== last) out.line(printable(m.path));
          last = m.path;
          out.line(`  ${shortId(m.snapshot)}  ${time(m.time)}  ${modeString(m.type, m.mode)} ${String(m.size).padStart(12)}` +
            `  modified ${time(new Date(m.mtime[0] * 1000).toISOString())}`);
        }
        if (matches.length === 0) out.line(`nothing matches ${pattern}`);
      });
    }));

  program.command('restore')
    .description('restore a snapshot under a target directory')
    .argument('<snapshot>', '"latest" or an id prefix')
    .requiredOption('--target <dir>', 'where to restore (snapshot paths are recreated under it)')
    .option('--include <path>', 'restore only this path of the snapshot (repeatable)', collect)
    .option('--from-target <name>', 'read the snapshot from this replication target\'s store instead of the local repository')
    .action(action(async (g, ref: string, o: { target: string; include?: string[]; fromTarget?: string }) => {
      const open = o.fromTarget === undefined ? undefined : () => openFromTarget(g, o.fromTarget!);
      return withRepository(g, async (repo) => {
        const s = resolveSnapshot((await listSnapshots(repo)).snapshots, ref);
        let stats: { files: number; bytes: number } | null = null;
        const started = performance.now();
        out.startProgress(() => stats
          ? `${duration((performance.now() - started) / 1000)}  ${stats.files} files  ${bytes(stats.bytes)}`
          : 'starting…');
        const r = await restore(repo, s.snapshot, {
          target: o.target,
          include: o.include ?? [],
          signal: abort.signal,
          onWarning: (w) => out.warn(`${printable(w.path)}: ${w.message} [${w.code}]`),
          onStart: (st) => { stats = st; },
        });
        out.stopProgress();
        const st = r.stats;
        out.line(`restored snapshot ${shortId(s.id)} to ${path.resolve(o.target)}: ${st.files} files (${bytes(st.bytes)}), ` +
          `${st.dirs} directories, ${st.symlinks} symlinks, ${st.hardlinks} hard links in ${duration(r.seconds)}` +
          `${st.failed ? `; ${st.failed} file(s) NOT restored` : ''}${r.warnings.length ? `; ${r.warnings.length} warning(s)` : ''}`);
        out.result({ snapshot: s.id, target: path.resolve(o.target), ...st, seconds: r.seconds, warnings: r.warnings.length, warningList: r.warnings.slice(0, 100) });
        return r.warnings.length > 0 ? EXIT.warnings : EXIT.ok;
      }, open);
    }));

  program.command('check')
    .description('check the repository; exit 0 only when it is clean')
    .addOption(new Option('--read-data', 'read and verify every pack'))
    .addOption(new Option('--read-data-subset <percent>', 'read and verify a random share of the packs, e.g. 10%').argParser(percent))
    .action(action(async (g, o: { readData?: boolean; readDataSubset?: number }) => {
      return withRepository(g, async (repo) => {
        const readData = o.readData ? { fraction: 1 } : o.readDataSubset ? { fraction: o.readDataSubset } : null;
        let phase = 'starting';
        out.startProgress(() => phase);
        const r = await check(repo, { readData, onProgress: (p) => { phase = `${p.phase} ${p.done}/${p.total}`; } });
        out.stopProgress();
        for (const n of r.notes) out.note(`note: ${n}`);
        for (const p of r.problems) out.line(`error: ${p.message}`);
        if (r.damagedPacks.length > 0) {
          out.line(`damaged packs: ${r.damagedPacks.join(' ')}`);
        }
        for (const a of r.affected) {
          out.line(`snapshot ${shortId(a.snapshot)} (${time(a.time)}) is affected; these cannot be fully restored:`);
          for (const f of a.paths.slice(0, 1000)) out.line(`  ${printable(f)}`);
          if (a.paths.length > 1000) out.line(`  … and ${a.paths.length - 1000} more`);
        }
        const s = r.stats;
        out.line(r.ok
          ? `no errors: ${s.snapshots} snapshots, ${s.trees} trees, ${s.blobs} blobs in ${s.packs} packs` +
            `${readData ? `; read ${s.packsRead} packs (${bytes(s.bytesRead)})` : ''}`
          : `${r.problems.length} error(s) found.${r.affected.length > 0
            ? ' Affected files are listed above: restore what is intact, run a new backup to store the damaged data again, ' +
              'then `holdfast forget` the affected snapshots if they are no longer needed.'
            : ' No snapshot has lost data; follow the advice given with each error.'}`);
        out.result(r);
        return r.ok ? EXIT.ok : EXIT.failed;
      });
    }));

  program.command('forget')
    .description('forget snapshots by id or by retention policy (data stays until prune)')
    .argument('[snapshots...]', 'snapshots to forget (ids or prefixes)')
    .option('--keep-last <n>', 'keep the newest n', count)
    .option('--keep-hourly <n>', 'keep the newest of each of the last n hours', count)
    .option('--keep-daily <n>', 'keep the newest of each of the last n days', count)
    .option('--keep-weekly <n>', 'keep the newest of each of the last n weeks', count)
    .option('--keep-monthly <n>', 'keep the newest of each of the last n months', count)
    .option('--keep-yearly <n>', 'keep the newest of each of the last n years', count)
    .option('--keep-tag <tag>', 'keep every snapshot with this tag (repeatable)', collect)
    .option('--prune', 'prune afterwards')
    .option('--dry-run', 'only show what would be forgotten')
    .action(action(async (g, ids: string[], o: Record<string, number | string[] | boolean | undefined>) => {
      return withRepository(g, async (repo) => {
        const policy: RetentionPolicy = {};
        for (const k of ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
          const v = o[`keep${k[0]!.toUpperCase()}${k.slice(1)}`];
          if (typeof v === 'number') policy[k] = v;
        }
        if (Array.isArray(o.keepTag)) policy.tags = o.keepTag;
        if (ids.length > 0 && Object.keys(policy).length > 0) {
          throw new HoldfastError('HF_USAGE', 'give snapshot ids or a retention policy, not both');
        }
        const r = await forget(repo, { snapshots: ids, policy: Object.keys(policy).length ? policy : undefined, dryRun: o.dryRun === true });
        for (const d of r.decisions) {
          out.line(`${d.keep ? 'keep  ' : o.dryRun ? 'would forget' : 'forget'}  ${shortId(d.entry.id)}  ${time(d.entry.snapshot.time)}  ` +
            `${d.entry.snapshot.host}  ${d.entry.snapshot.paths.join(', ')}${d.keep ? `  (${d.reasons.join(', ')})` : ''}`);
        }
        let pruned = null;
        if (o.prune && !o.dryRun) pruned = await prune(repo, {});
        if (pruned) out.line(pruneSummary(pruned));
        out.result({
          kept: r.decisions.filter((d) => d.keep).map((d) => d.entry.id),
          removed: r.removed,
          wouldRemove: o.dryRun ? r.decisions.filter((d) => !d.keep).map((d) => d.entry.id) : [],
          prune: pruned,
        });
      });
    }));

  program.command('prune')
    .description('remove data that no snapshot needs')
    .option('--dry-run', 'only show what would be removed')
    .action(action(async (g, o: { dryRun?: boolean }) => {
      return withRepository(g, async (repo) => {
        let phase = 'marking';
        out.startProgress(() => phase);
        const r = await prune(repo, { dryRun: o.dryRun ?? false, onProgress: (p) => { phase = `${p.phase} ${p.done}/${p.total}`; } });
        out.stopProgress();
        out.line(pruneSummary(r));
        out.result(r);
      });
    }));

  program.command('unlock')
    .description('remove locks left by processes that are gone')
    .option('--remove-all', 'remove every lock, even live ones (only when you know no other holdfast runs)')
    .action(action(async (g, o: { removeAll?: boolean }) => {
      const storage = new LocalStorage(repoLocation(g));
      await storage.assertExists();
      const removed = await removeLocks(storage, o.removeAll ?? false);
      for (const l of removed) out.line(`removed ${l.mode} lock of pid ${l.pid} on ${l.host} (\`${l.command}\`, ${l.time})`);
      if (removed.length === 0) out.line('no stale locks');
      out.result({ removed });
    }));

  const key = program.command('key').description('manage the passphrase');
  key.command('passwd')
    .description('set a new passphrase (from HOLDFAST_NEW_PASSWORD or --new-password-file); open with the old one or the recovery key')
    .option('--new-password-file <file>', 'the new passphrase')
    .action(action(async (g, o: { newPasswordFile?: string }) => {
      // never HOLDFAST_PASSWORD: that is the old one
      const next = o.newPasswordFile ? readSecretFile(o.newPasswordFile, 'new passphrase') : process.env.HOLDFAST_NEW_PASSWORD;
      if (!next) throw new HoldfastError('HF_NO_PASSWORD', 'no new passphrase: set HOLDFAST_NEW_PASSWORD or pass --new-password-file');
      return withRepository(g, async (repo) => {
        await repo.changePassphrase(next);
        out.line('passphrase changed; the recovery key still works');
        out.result({ changed: true });
      });
    }));

  registerReplicationCommands(program, { action, out: () => out, signal: abort.signal, exit: EXIT });
  registerServiceCommands(program, { action, out: () => out, signal: abort.signal, exit: EXIT });
  registerConsoleCommands(program, { action, out: () => out, signal: abort.signal, exit: EXIT });
  registerEscrowCommands(program, { action, out: () => out, signal: abort.signal, exit: EXIT });
  registerAgentCommands(program, { action, out: () => out, signal: abort.signal, exit: EXIT });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.ok;
      return EXIT.usage;
    }
    out.error(err);
    return EXIT.failed;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return status;
}

function pruneSummary(r: { dryRun: boolean; packsDeleted: number; packsRepacked: number; strayPacks: number; blobsRemoved: number; bytesBefore: number; bytesAfter: number }): string {
  return `${r.dryRun ? 'would remove' : 'removed'} ${r.blobsRemoved} unused blobs: ${r.packsDeleted} packs deleted, ` +
    `${r.packsRepacked} repacked, ${r.strayPacks} stray; ${bytes(r.bytesBefore)} -> ${bytes(r.bytesAfter)}`;
}

interface BackupFlags {
  tag?: string[];
  host?: string;
  parent?: string;
  force?: boolean;
  sourcePasswordFile?: string;
  sourceSnapshot?: string;
  identity?: string;
  knownHosts?: string;
  hostKey?: string;
}

/** The secrets and pins a source URL needs, from flags and the environment; wrong combinations are HF_USAGE. */
function sourceCredentials(spec: SourceSpec, o: BackupFlags): SourceCredentials {
  const remoteOnly = { sourcePasswordFile: '--source-password-file', sourceSnapshot: '--source-snapshot', identity: '--identity', knownHosts: '--known-hosts', hostKey: '--host-key' } as const;
  const allowed: Record<SourceSpec['kind'], (keyof typeof remoteOnly)[]> = {
    local: [],
    smb: ['sourcePasswordFile', 'sourceSnapshot'],
    sftp: ['identity', 'knownHosts', 'hostKey'],
  };
  for (const [k, flag] of Object.entries(remoteOnly) as [keyof typeof remoteOnly, string][]) {
    if (o[k] !== undefined && !allowed[spec.kind].includes(k)) {
      throw new HoldfastError('HF_USAGE', `${flag} does not apply to a ${spec.kind === 'local' ? 'local path' : `${spec.kind}:// source`}`);
    }
  }
  const creds: SourceCredentials = {};
  if (spec.kind === 'smb') {
    const pw = o.sourcePasswordFile ? readSecretFile(o.sourcePasswordFile, 'source password') : process.env.HOLDFAST_SOURCE_PASSWORD;
    if (pw !== undefined) creds.password = pw;
    if (o.sourceSnapshot) {
      if (o.sourceSnapshot === 'latest') creds.snapshot = 'latest';
      else {
        const t = Date.parse(o.sourceSnapshot);
        if (!Number.isFinite(t)) throw new HoldfastError('HF_USAGE', `--source-snapshot '${o.sourceSnapshot}': give "latest" or a time like 2026-11-20T18:00:00Z`);
        creds.snapshot = new Date(t);
      }
    }
  }
  if (o.identity) creds.identity = o.identity;
  if (o.knownHosts) creds.knownHosts = o.knownHosts;
  if (o.hostKey) {
    if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(o.hostKey)) throw new HoldfastError('HF_USAGE', `--host-key '${o.hostKey}': give the fingerprint as \`ssh-keygen -lf\` prints it, SHA256: and 43 characters`);
    creds.hostKey = o.hostKey;
  }
  return creds;
}
