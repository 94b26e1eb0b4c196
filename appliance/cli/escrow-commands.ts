import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import type { Command } from 'commander';

import { HoldfastError } from '../errors/index.ts';
import { type EscrowConfig, maskEscrowConfig, openEscrow, readEscrowHeader } from '../escrow/index.ts';
import { type GlobalOptions, readSecretFile } from './context.ts';
import { bytes } from './output.ts';
import type { CommandContext } from './replication-commands.ts';
import { withLocalEngine } from './service-commands.ts';

/** The recovery key: the global --recovery-key-file, else HOLDFAST_RECOVERY_KEY. */
function recoveryKey(g: GlobalOptions): string {
  const k = g.recoveryKeyFile ? readSecretFile(g.recoveryKeyFile, 'recovery key') : process.env.HOLDFAST_RECOVERY_KEY;
  if (!k) throw new HoldfastError('HF_NO_PASSWORD', 'no recovery key: pass --recovery-key-file FILE (or set HOLDFAST_RECOVERY_KEY): the one printed at the box\'s setup');
  return k;
}

function readEscrowFile(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (cause) {
    throw new HoldfastError('HF_ESCROW_NOT_FOUND', `cannot read the escrow file ${file}: ${(cause as Error).message}`, { cause });
  }
}

const withEngine = withLocalEngine;

/** A configuration with its secrets masked, as lines for people. */
function describe(c: EscrowConfig): string[] {
  const m = maskEscrowConfig(c);
  const out = [
    `box ${m.box.name ?? '(no tenant name)'} on ${m.box.hostname} (${m.box.program}); repository ${m.repository.id}, passphrase ${m.repository.password}`,
  ];
  for (const s of m.sources) {
    const where = s.spec.kind === 'local' ? 'local' : `${s.spec.kind}://${s.spec.user}@${s.spec.host}:${s.spec.port}`;
    const secrets = (['password', 'identityKey'] as const).filter((k) => s.secret[k] !== undefined);
    out.push(`source ${s.name}: ${where} ${s.spec.paths.join(' ')}${secrets.length ? `, with ${secrets.join(' and ')}` : ''}` +
      `${s.secret.hostKey ? `, host key ${s.secret.hostKey}` : ''}`);
  }
  for (const s of m.schedules) out.push(`schedule: ${s.job}${s.subject ? ` ${s.subject}` : ''} at "${s.cron}"${s.enabled ? '' : ' (disabled)'}`);
  out.push(`retention: ${m.retention ? JSON.stringify(m.retention) : 'none'}; ${m.protected.length} protected snapshot(s)`);
  for (const u of m.users) out.push(`user ${u.name}: ${u.role}, with its password hash`);
  for (const t of m.targets) {
    out.push(`target ${t.name}: ${t.endpoints.map((e) => `${e.host}:${e.port}`).join(', ')} as tenant ${t.tenant ?? '?'}` +
      `${t.rate ? `, rate ${t.rate}` : ''}${t.windows.length ? `, windows ${t.windows.join('; ')}` : ''}${t.ca ? '' : ', CA missing (the restore uses --ca)'}`);
  }
  return out;
}

/** `holdfast escrow …`: the configuration escrow, on the box and on its replacement. */
export function registerEscrowCommands(program: Command, ctx: CommandContext): void {
  const out = () => ctx.out();
  const escrow = program.command('escrow')
    .description('the configuration escrow: the box\'s configuration sealed for its recovery key, what a replacement box is restored from');

  escrow.command('restore')
    .description('make this box the lost one: open the escrow with the recovery key (--recovery-key-file), clone the repository from its targets ' +
      'with this box\'s certificate, and write the engine\'s configuration into DIR (start holdfast-engine afterwards)')
    .requiredOption('--data-dir <dir>', 'the new box\'s data directory (new, or unconfigured)')
    .requiredOption('--escrow-file <file>', 'the sealed escrow (from the fleet)')
    .requiredOption('--cert <file>', 'this box\'s certificate, with the old box\'s name (the tenant)')
    .requiredOption('--key <file>', 'its key')
    .requiredOption('--ca <file>', 'the vendor CA that issued it')
    .action(ctx.action(async (g: GlobalOptions, o: { dataDir: string; escrowFile: string; cert: string; key: string; ca: string }) => {
      const { restoreFromEscrow } = await import('../engine/index.ts');
      const r = await restoreFromEscrow({
        dataDir: path.resolve(o.dataDir), escrow: readEscrowFile(o.escrowFile), recoveryKey: recoveryKey(g),
        identity: { cert: path.resolve(o.cert), key: path.resolve(o.key), ca: path.resolve(o.ca) }, signal: ctx.signal,
        onProgress: (m) => out().note(m),
      });
      out().line(`restored ${r.tenant} into ${path.resolve(o.dataDir)}: repository cloned from ${r.clonedFrom} (${r.files} files, ${bytes(r.bytes)}; ` +
        `${r.snapshots} snapshots), ${r.sources} sources, ${r.schedules} schedules, ${r.users} users, ${r.targets} targets. ` +
        'Start holdfast-engine on it; users log in with their old passwords.');
      out().result(r);
      return ctx.exit.ok;
    }));

  escrow.command('show')
    .description('print what an escrow holds (secrets masked); needs the recovery key (--recovery-key-file)')
    .requiredOption('--escrow-file <file>', 'the sealed escrow')
    .action(ctx.action(async (g: GlobalOptions, o: { escrowFile: string }) => {
      const blob = readEscrowFile(o.escrowFile);
      const c = openEscrow(blob, recoveryKey(g));
      for (const l of describe(c)) out().line(l);
      out().result({ keyId: readEscrowHeader(blob).keyId, config: maskEscrowConfig(c) });
      return ctx.exit.ok;
    }));

  escrow.command('export')
    .description('write this box\'s current escrow to a file (what the agent hands to the fleet), through the engine\'s socket')
    .requiredOption('--to <file>', 'where to write it')
    .option('--data-dir <dir>', 'data directory (or HOLDFAST_DATA_DIR)')
    .action(ctx.action(async (_g: GlobalOptions, o: { to: string; dataDir?: string }) => {
      const r = await withEngine(o, async (c) => {
        const a = await c.raw('GET', '/v1/escrow', {});
        const body = Buffer.from(await a.body.arrayBuffer());
        if (a.statusCode !== 200) {
          const e = (JSON.parse(body.toString('utf8') || '{}') as { error?: { code?: string; message?: string } }).error ?? {};
          throw new HoldfastError((e.code ?? 'HF_IO') as 'HF_IO', e.message ?? `HTTP ${a.statusCode}`);
        }
        return { blob: body, digest: String(a.headers['x-holdfast-escrow-sha256'] ?? ''), keyId: String(a.headers['x-holdfast-escrow-key-id'] ?? '') };
      });
      await fsp.writeFile(o.to, r.blob, { mode: 0o600 });
      out().line(`wrote the escrow (${bytes(r.blob.length)}, sealed for recovery key ${r.keyId}) to ${o.to}`);
      out().result({ file: path.resolve(o.to), bytes: r.blob.length, keyId: r.keyId, digest: r.digest });
      return ctx.exit.ok;
    }));

  escrow.command('set-key')
    .description('let a box whose repository was adopted (--repo) seal escrows: give its recovery key once (--recovery-key-file); only the public part is kept')
    .option('--data-dir <dir>', 'data directory (or HOLDFAST_DATA_DIR)')
    .action(ctx.action(async (g: GlobalOptions, o: { dataDir?: string }) => {
      const key = recoveryKey(g);
      const r = await withEngine(o, (c) => c.call<{ keyId: string }>('PUT', '/v1/escrow/key', { recoveryKey: key }));
      out().line(`escrow key set (id ${r.keyId}): the box seals its configuration for this recovery key; the key itself is not kept`);
      out().result({ keyId: r.keyId });
      return ctx.exit.ok;
    }));
}
