// `npm run channel -- COMMAND`: the vendor's update channel and fleet
// service. Commands that change the fleet open its database directly (beside
// a running `serve`: SQLite serializes them); `publish` also needs the
// offline TUF keys.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { Command } from 'commander';
import { pino } from 'pino';

import { HoldfastError } from '../../appliance/errors/index.ts';
import { initCa, issueCertificate } from '../../appliance/pki/index.ts';
import { buildBundle } from '../bundle/release-bundle.ts';
import { FleetService } from '../fleet/fleet-service.ts';
import { SqliteFleetStore } from '../fleet/sqlite-fleet-store.ts';
import { channelFiles } from '../server/channel-files.ts';
import { startChannelServer } from '../server/channel-server.ts';
import { initTufRepository, publishRelease } from '../tuf/index.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

async function openFleet(dir: string, o: { heartbeatSeconds?: number } = {}): Promise<FleetService> {
  const files = channelFiles(dir);
  if (!fs.existsSync(files.vendorToken)) throw new HoldfastError('HF_USAGE', `${dir} is not an update channel: run \`npm run channel -- init --dir ${dir} --offline-keys KEYDIR\` first`);
  return new FleetService({ store: await SqliteFleetStore.open(files.database), caDir: files.ca, ...(o.heartbeatSeconds ? { heartbeatSeconds: o.heartbeatSeconds } : {}) });
}

function listen(v: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(v);
  if (!m || Number(m[3]) > 65535) throw new HoldfastError('HF_USAGE', `--listen ${JSON.stringify(v)}: give HOST:PORT`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

const print = (json: boolean, value: unknown, text: string) => process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`);

export function channelProgram(signal: AbortSignal): Command {
  const program = new Command('channel').description('the Holdfast update channel and fleet service (vendor side)').option('--json', 'print JSON');
  const json = () => Boolean(program.opts().json);

  program.command('init')
    .description('create a channel: vendor CA, the service\'s certificate, TUF repository (offline keys elsewhere), vendor token')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .requiredOption('--offline-keys <dir>', 'where the offline TUF keys (root, targets) go: keep it off the server')
    .option('--host <names>', 'DNS names / IPs of the service, comma-separated', 'localhost,127.0.0.1,::1')
    .action(async (o: { dir: string; offlineKeys: string; host: string }) => {
      const files = channelFiles(o.dir);
      await fsp.mkdir(o.dir, { recursive: true, mode: 0o700 });
      await initCa(files.ca, { name: 'Holdfast vendor CA' });
      await issueCertificate(files.ca, { name: 'fleet', kind: 'fleet', hosts: o.host.split(',').map((h) => h.trim()).filter(Boolean) });
      const tuf = await initTufRepository({ repoDir: files.tuf, offlineKeysDir: o.offlineKeys });
      await fsp.writeFile(files.vendorToken, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
      (await openFleet(o.dir)).store.close();
      print(json(), { dir: path.resolve(o.dir), root: tuf.rootFile }, `channel created in ${path.resolve(o.dir)}; offline keys in ${path.resolve(o.offlineKeys)} (move them off this server)`);
    });

  program.command('serve')
    .description('run the fleet service: enrollment, heartbeats, commands, escrow, TUF metadata and releases, the fleet page')
    .option('--dir <dir>', 'the channel\'s directory', '/var/lib/holdfast-channel')
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:7600')
    .option('--heartbeat-seconds <n>', 'the heartbeat interval boxes are told', '300')
    .action(async (o: { dir: string; listen: string; heartbeatSeconds: string }) => {
      const log = pino({ base: { service: 'holdfast-channel' } });
      const fleet = await openFleet(o.dir, { heartbeatSeconds: Number(o.heartbeatSeconds) });
      const server = await startChannelServer({ dir: o.dir, fleet, ...listen(o.listen), log });
      log.info({ url: server.url, port: server.port }, 'channel ready');
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      await server.close();
      await fleet.store.close();
    });

  program.command('token')
    .description('a one-time enrollment token (shown once); with --provisioning, the file a box\'s image carries')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .option('--hours <n>', 'how long the token is valid', '72')
    .option('--replaces <box>', 'enroll as the replacement of this box (its name, tenant and escrow)')
    .option('--note <text>', 'what the token is for', '')
    .option('--provisioning <file>', 'write the provisioning file (token, fleet address, CA, TUF root) here')
    .option('--fleet-url <url>', 'the address boxes reach the service at (with --provisioning)', 'https://localhost:7600')
    .option('--channel <name>', 'the box\'s release channel (with --provisioning)', 'stable')
    .action(async (o: { dir: string; hours: string; replaces?: string; note: string; provisioning?: string; fleetUrl: string; channel: string }) => {
      const fleet = await openFleet(o.dir);
      try {
        const t = await fleet.createToken({ hours: Number(o.hours), replaces: o.replaces ?? null, note: o.note });
        if (o.provisioning) {
          const files = channelFiles(o.dir);
          const p = {
            format: 'holdfast-provisioning', version: 1, fleet: o.fleetUrl.replace(/\/$/, ''), token: t.token,
            ca: await fsp.readFile(files.caCert, 'utf8'), tufRoot: JSON.parse(await fsp.readFile(path.join(files.tufMetadata, '1.root.json'), 'utf8')),
            channel: o.channel,
          };
          await fsp.writeFile(o.provisioning, `${JSON.stringify(p, null, 2)}\n`, { mode: 0o600 });
        }
        print(json(), t, `${t.token}  (valid until ${t.expires}${o.replaces ? `; replaces ${o.replaces}` : ''})${o.provisioning ? `\nprovisioning file: ${o.provisioning}` : ''}`);
      } finally {
        await fleet.store.close();
      }
    });

  program.command('revoke')
    .description('revoke a box: its certificates go on the CRL and the fleet answers it 401')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .argument('<box>')
    .action(async (box: string, o: { dir: string }) => {
      const fleet = await openFleet(o.dir);
      try {
        const r = await fleet.revoke(box);
        print(json(), r, `${box} revoked (${r.serials.length} certificates on the CRL: hand ${channelFiles(o.dir).crl} to the stores)`);
      } finally {
        await fleet.store.close();
      }
    });

  program.command('bundle')
    .description('build a release bundle (application + pinned Node runtime) from this checkout')
    .requiredOption('--version <v>', 'the release version')
    .requiredOption('--out <file>', 'the bundle to write (.tar.gz)')
    .option('--runtime <file>', 'the Node binary to ship (default the pinned one)')
    .action(async (o: { version: string; out: string; runtime?: string }) => {
      const r = await buildBundle({ appRoot: ROOT, out: o.out, version: o.version, ...(o.runtime ? { runtime: o.runtime } : {}) });
      print(json(), r, `${r.file}: ${r.entries} entries, ${(r.size / 1e6).toFixed(1)} MB, sha256 ${r.sha256}`);
    });

  program.command('publish')
    .description('sign a release into the channel (TUF, offline targets key) and start its staged rollout')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .requiredOption('--offline-keys <dir>', 'the offline TUF keys')
    .requiredOption('--channel <name>', 'stable or beta')
    .requiredOption('--version <v>', 'the release version')
    .option('--percent <p>', 'the first stage: this share of the channel\'s boxes', '10')
    .argument('<bundle>')
    .action(async (bundle: string, o: { dir: string; offlineKeys: string; channel: string; version: string; percent: string }) => {
      const fleet = await openFleet(o.dir);
      try {
        if (o.channel !== 'stable' && o.channel !== 'beta') throw new HoldfastError('HF_USAGE', '--channel is stable or beta');
        const r = await publishRelease({ repoDir: channelFiles(o.dir).tuf, offlineKeysDir: o.offlineKeys, bundleFile: bundle, channel: o.channel, version: o.version });
        const rel = await fleet.addRelease(o.channel, o.version, Number(o.percent));
        print(json(), { ...r, rollout: rel }, `published ${r.release.path} (${r.release.length} bytes, sha256 ${r.release.sha256}); rollout at ${rel.percent}%`);
      } finally {
        await fleet.store.close();
      }
    });

  program.command('rollout')
    .description('raise (or lower) a release\'s staged rollout; a halted one needs --resume')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .requiredOption('--channel <name>', 'stable or beta')
    .requiredOption('--version <v>', 'the release')
    .requiredOption('--percent <p>', 'share of the channel\'s boxes')
    .option('--resume', 'go on after an automatic halt')
    .action(async (o: { dir: string; channel: string; version: string; percent: string; resume?: boolean }) => {
      const fleet = await openFleet(o.dir);
      try {
        const r = await fleet.setRollout(o.channel, o.version, Number(o.percent), o.resume === true);
        print(json(), r, `${r.channel} ${r.version}: ${r.percent}%${r.halted ? ` (halted: ${r.haltReason})` : ''}`);
      } finally {
        await fleet.store.close();
      }
    });

  program.command('command')
    .description('queue a command for a box (it runs at its next heartbeat): run-job, set, upgrade, rotate-key')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .argument('<box>')
    .argument('<kind>')
    .argument('[args]', 'JSON arguments, e.g. \'{"job":"backup","subject":"fs1"}\'', '{}')
    .action(async (box: string, kind: string, args: string, o: { dir: string }) => {
      const fleet = await openFleet(o.dir);
      try {
        let parsed: unknown;
        try {
          parsed = JSON.parse(args);
        } catch (cause) {
          throw new HoldfastError('HF_USAGE', `the arguments are not JSON: ${args}`, { cause });
        }
        const id = await fleet.addCommand(box, kind, parsed, 'cli');
        print(json(), { id }, `command ${id} queued for ${box}`);
      } finally {
        await fleet.store.close();
      }
    });

  program.command('boxes')
    .description('the fleet: every box, its version, last heartbeat and health')
    .requiredOption('--dir <dir>', 'the channel\'s directory')
    .action(async (o: { dir: string }) => {
      const fleet = await openFleet(o.dir);
      try {
        const boxes = await fleet.fleet();
        print(json(), { boxes }, boxes.map((b) => `${String(b.name).padEnd(16)} ${String(b.version ?? '-').padEnd(10)} ${String(b.channel).padEnd(7)} ` +
          `${b.revoked ? 'REVOKED' : String((b.health as { status?: string } | null)?.status ?? '-').padEnd(8)} last heartbeat ${b.lastHeartbeat ?? 'never'}`).join('\n') || 'no boxes');
      } finally {
        await fleet.store.close();
      }
    });
  return program;
}

if (import.meta.main) {
  const abort = new AbortController();
  for (const s of ['SIGINT', 'SIGTERM'] as const) process.on(s, () => abort.abort());
  try {
    await channelProgram(abort.signal).parseAsync(process.argv);
  } catch (err) {
    const code = (err as { code?: string }).code;
    process.stderr.write(`channel: ${code ?? 'error'}: ${(err as Error).message}\n`);
    process.exitCode = code === 'HF_USAGE' ? 2 : 1;
  }
}
