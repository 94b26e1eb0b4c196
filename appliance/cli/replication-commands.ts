import fs from 'node:fs';
import path from 'node:path';

import { type Command, InvalidArgumentError } from 'commander';

import { HoldfastError } from '../errors/index.ts';
import { initCa, issueCertificate, readPem, revokeCertificate } from '../pki/index.ts';
import {
  RemoteStorage, type TargetConfig, TargetRegistry, type TargetRun, cloneRepository, endpointText, exportSeed, localFiles, parseEndpoints,
  parseRate, parseWindows, replicateTargets, targetClient, targetStatus, targetTls, TargetClient, useStreamingHeap,
} from '../replication/index.ts';
import { Lock, Repository } from '../repository/index.ts';
import { listSnapshots } from '../snapshot/index.ts';
import { FsStoreBackend, type S3BucketInfo, type StoreBackend, StoreServer, assertTenant, importSeed } from '../store/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { type GlobalOptions, credentials, repoLocation, untilAborted } from './context.ts';
import { type Output, bytes, duration } from './output.ts';

export interface CommandContext {
  action: <A extends unknown[]>(fn: (g: GlobalOptions, ...args: A) => Promise<number | void>) => (...args: A) => Promise<void>;
  out: () => Output;
  signal: AbortSignal;
  exit: { ok: number; failed: number; warnings: number };
}

/** `30d`, `12h`, `90m`, `45s` (or bare seconds) → seconds. */
interface BackendFlags {
  dir?: string;
  backend: string;
  s3Endpoint?: string;
  s3Bucket?: string;
  s3Region?: string;
  s3PathStyle?: boolean;
  s3Prefix?: string;
  s3LockMode?: string;
  s3ClaimLease?: number;
  s3PartSize?: number;
  s3SinglePutMax?: number;
}

/** The options that say where a store keeps its files: a directory (default) or an S3 bucket. */
function backendOptions(cmd: Command): Command {
  return cmd
    .option('--dir <dir>', 'the store directory (--backend fs; several serve processes may share it)')
    .option('--backend <kind>', 'fs (a directory) or s3 (a bucket of an S3-compatible object store)', 'fs')
    .option('--s3-endpoint <url>', 'the S3 API, e.g. http://rgw.example:7480 (default: AWS S3 of the region)')
    .option('--s3-bucket <name>', 'the bucket (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)')
    .option('--s3-region <region>', 'the region', 'us-east-1')
    .option('--s3-path-style', 'bucket in the path, not the host name (Ceph RGW, MinIO)')
    .option('--s3-prefix <prefix>', 'a key prefix ending in / (several stores in one bucket)')
    .option('--s3-lock-mode <mode>', 'Object Lock retention mode: COMPLIANCE (nobody can shorten it) or GOVERNANCE', 'COMPLIANCE')
    .option('--s3-claim-lease <duration>', 'how soon another front-end may take over an upload whose front-end died', parseDuration, 15)
    .option('--s3-part-size <size>', 'multipart part size (whole MiB, at least 5MiB; what a resumed upload keeps)', parseSize, 16 * 2 ** 20)
    .option('--s3-single-put-max <size>', 'files up to this size go in one PUT (buffered; not resumable)', parseSize, 32 * 2 ** 20);
}

/** Opens the store's backend; a directory is created only when `create` (serve, import). */
async function openBackend(o: BackendFlags, graceSeconds: number, create = false): Promise<StoreBackend & { describe(): string; s3?: S3BucketInfo }> {
  if (o.backend === 'fs') {
    if (!o.dir) throw new HoldfastError('HF_USAGE', '--dir is required with --backend fs (the default)');
    const b = new FsStoreBackend(o.dir);
    if (create) await b.initialize();
    return Object.assign(b, { describe: () => path.resolve(o.dir!) });
  }
  if (o.backend !== 's3') throw new HoldfastError('HF_USAGE', `--backend '${o.backend}': give fs or s3`);
  if (!o.s3Bucket) throw new HoldfastError('HF_USAGE', '--s3-bucket is required with --backend s3');
  if (o.s3LockMode !== 'COMPLIANCE' && o.s3LockMode !== 'GOVERNANCE') throw new HoldfastError('HF_USAGE', `--s3-lock-mode '${o.s3LockMode}': give COMPLIANCE or GOVERNANCE`);
  if (o.s3Endpoint !== undefined && !/^https?:\/\/[^/]+\/?$/.test(o.s3Endpoint)) throw new HoldfastError('HF_USAGE', `--s3-endpoint '${o.s3Endpoint}': give http(s)://HOST[:PORT]`);
  const { S3StoreBackend } = await import('../store/s3-store-backend.ts'); // (the AWS SDK: only when asked for)
  const b = new S3StoreBackend({
    ...(o.s3Endpoint ? { endpoint: o.s3Endpoint } : {}), bucket: o.s3Bucket, region: o.s3Region ?? 'us-east-1',
    pathStyle: o.s3PathStyle === true, ...(o.s3Prefix ? { prefix: o.s3Prefix } : {}), graceSeconds, lockMode: o.s3LockMode,
    leaseSeconds: Math.max(3, o.s3ClaimLease ?? 15),
    ...(o.s3PartSize !== undefined ? { partSize: o.s3PartSize } : {}),
    ...(o.s3SinglePutMax !== undefined ? { singlePutMax: o.s3SinglePutMax } : {}),
  });
  try {
    await b.initialize();
  } catch (err) {
    await b.close();
    throw err;
  }
  return Object.assign(b, { describe: () => b.location, s3: b.info });
}

export function parseDuration(value: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d|w)?$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('expected a duration such as 30d, 12h, 90m or 45s');
  const unit = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[(m[2] ?? 's') as 's'];
  return Math.round(Number(m[1]) * unit);
}

/** `500GiB`, `2TB`, `100MiB` → bytes. */
export function parseSize(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('expected a size such as 500GiB, 2TB or 100MiB');
  const unit: Record<string, number> = { B: 1, kB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };
  return Math.round(Number(m[1]) * unit[m[2] ?? 'B']!);
}

function rateOption(value: string): string {
  try {
    parseRate(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return value;
}

function windowOption(value: string, previous: string[] = []): string[] {
  try {
    parseWindows(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return [...previous, value];
}

function listenOption(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value);
  if (!m || Number(m[3]) > 65535) throw new InvalidArgumentError('expected HOST:PORT, e.g. 0.0.0.0:7443 (port 0 picks a free one)');
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

interface TlsFlags {
  ca: string;
  cert: string;
  key: string;
  servername?: string;
}

function ago(iso: string | null): string {
  if (!iso) return 'never';
  return `${time(iso)} (${duration((Date.now() - Date.parse(iso)) / 1000)} ago)`;
}

function time(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** pki, store, target, replicate, clone, seed: the offsite side of the CLI. */
export function registerReplicationCommands(program: Command, ctx: CommandContext): void {
  const { action } = ctx;
  const out = () => ctx.out();

  const pki = program.command('pki').description('a certificate authority for stores and appliances, by hand (enrolled boxes get theirs from the fleet)');
  pki.command('init')
    .description('create a CA in DIR (ca.crt, ca.key, crl.pem)')
    .requiredOption('--dir <dir>', 'directory for the CA')
    .option('--name <name>', 'the CA\'s name', 'Holdfast CA')
    .option('--days <n>', 'validity in days', (v) => Number(v))
    .action(action(async (_g, o: { dir: string; name: string; days?: number }) => {
      const r = await initCa(o.dir, { name: o.name, ...(o.days ? { days: o.days } : {}) });
      out().line(`created CA ${o.name}: ${r.certFile} (give it to stores and appliances), ${r.keyFile} (keep it offline)`);
      out().result(r);
    }));
  pki.command('issue')
    .description('issue DIR/NAME.crt and DIR/NAME.key, signed by the CA in DIR')
    .requiredOption('--dir <dir>', 'the CA directory')
    .requiredOption('--name <name>', 'the certificate\'s name: an appliance\'s tenant name, or a store\'s name')
    .requiredOption('--kind <kind>', 'appliance or store')
    .option('--days <n>', 'validity in days', (v) => Number(v))
    .option('--host <host>', 'a store\'s DNS name or IP address (repeatable; default localhost, 127.0.0.1, ::1)', (v: string, p: string[] = []) => [...p, v])
    .action(action(async (_g, o: { dir: string; name: string; kind: string; days?: number; host?: string[] }) => {
      if (o.kind !== 'appliance' && o.kind !== 'store') throw new HoldfastError('HF_USAGE', '--kind must be appliance or store');
      const r = await issueCertificate(o.dir, { name: o.name, kind: o.kind, ...(o.days ? { days: o.days } : {}), ...(o.host ? { hosts: o.host } : {}) });
      out().line(`issued ${o.kind} certificate ${o.name}: ${r.certFile}, ${r.keyFile} (valid until ${r.notAfter.toISOString()})`);
      out().result({ ...r, notBefore: r.notBefore.toISOString(), notAfter: r.notAfter.toISOString() });
    }));
  pki.command('revoke')
    .description('revoke DIR/NAME.crt: adds it to DIR/crl.pem (stores reload it on SIGHUP)')
    .requiredOption('--dir <dir>', 'the CA directory')
    .requiredOption('--name <name>', 'the certificate to revoke')
    .action(action(async (_g, o: { dir: string; name: string }) => {
      const r = await revokeCertificate(o.dir, o.name);
      out().line(`revoked ${o.name} (serial ${r.serialNumber}); copy ${r.crlFile} to the stores and send them SIGHUP`);
      out().result(r);
    }));

  const store = program.command('store').description('the offsite store role');
  backendOptions(store.command('serve')
    .description('serve a store to appliances (TLS 1.3, mutual certificates) from a directory or an S3 bucket'))
    .requiredOption('--listen <host:port>', 'address to listen on', listenOption)
    .requiredOption('--cert <file>', 'the store\'s certificate')
    .requiredOption('--key <file>', 'the store\'s key')
    .requiredOption('--ca <file>', 'the CA that issues appliance certificates')
    .option('--crl <file>', 'revoked certificates (reloaded on SIGHUP)')
    .option('--grace <duration>', 'how long a deleted file stays recoverable', parseDuration, 30 * 86400)
    .option('--quota <size>', 'bytes each tenant may use', parseSize)
    .option('--name <name>', 'the store\'s name told to clients', 'store')
    .action(action(async (_g, o: BackendFlags & { listen: { host: string; port: number }; cert: string; key: string; ca: string; crl?: string; grace: number; quota?: number; name: string }) => {
      const loadTls = async () => ({
        cert: Buffer.from(await readPem(o.cert, 'certificate')), key: Buffer.from(await readPem(o.key, 'key')),
        ca: Buffer.from(await readPem(o.ca, 'CA certificate')), ...(o.crl ? { crl: Buffer.from(await readPem(o.crl, 'CRL')) } : {}),
      });
      useStreamingHeap();
      const log = (e: Record<string, unknown>) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`);
      const backend = await openBackend(o, o.grace, true);
      if (backend.s3) {
        const info = backend.s3;
        if (info.objectLock) log({ event: 'object-lock', enabled: true, mode: o.s3LockMode, retentionSeconds: o.grace, message: `every object is retained ${o.grace} s (${o.s3LockMode}) by the bucket itself` });
        else log({ event: 'object-lock', enabled: false, message: `bucket ${o.s3Bucket} has no Object Lock: anyone with these credentials can destroy offsite copies at once; for immutability create the bucket with Object Lock enabled` });
        log({ event: 'payload-check', enabled: info.payloadChecked, message: info.payloadChecked
          ? 'the object store checks each PUT against its SHA-256 payload hash: one-PUT files are verified by it'
          : 'the object store did not refuse a PUT under a wrong payload hash: the store hashes every file itself' });
      }
      const server = new StoreServer({ backend, tls: await loadTls(), name: o.name, graceSeconds: o.grace, quota: o.quota ?? null, log });
      const addr = await server.listen(o.listen.host, o.listen.port);
      const purge = async () => {
        const n = await backend.purge(new Date(Date.now() - o.grace * 1000)).catch((err: unknown) => { log({ event: 'purge-failed', message: (err as Error).message }); return 0; });
        if (n > 0) log({ event: 'purged', files: n });
      };
      await purge();
      const timer = setInterval(() => void purge(), Math.min(3600, Math.max(1, o.grace / 4)) * 1000);
      const onHup = () => void loadTls().then((t) => { server.reloadTls(t); log({ event: 'reloaded' }); }, (err: unknown) => log({ event: 'reload-failed', message: (err as Error).message }));
      process.on('SIGHUP', onHup);
      out().line(`store ${o.name} serving ${backend.describe()} on ${endpointText({ host: addr.address, port: addr.port })}`);
      out().result({ listening: { host: addr.address, port: addr.port }, backend: o.backend, location: backend.describe(), ...(o.backend === 'fs' ? { dir: backend.describe() } : {}), pid: process.pid });
      await untilAborted(ctx.signal);
      clearInterval(timer);
      process.off('SIGHUP', onHup);
      await server.close();
      await backend.close();
      return ctx.exit.ok;
    }));
  backendOptions(store.command('import')
    .description('install a shipped-disk seed (from `holdfast seed export`) for a tenant'))
    .requiredOption('--tenant <name>', 'the appliance\'s certificate name')
    .requiredOption('--from <dir>', 'the seed')
    .action(action(async (_g, o: BackendFlags & { tenant: string; from: string }) => {
      assertTenant(o.tenant);
      const backend = await openBackend(o, 30 * 86400, true);
      try {
        const r = await importSeed(backend, o.tenant, o.from);
        out().line(`imported ${r.files} files (${bytes(r.bytes)}) for tenant ${o.tenant}; ${r.present} were already there`);
        out().result({ tenant: o.tenant, ...r });
      } finally {
        await backend.close();
      }
    }));
  backendOptions(store.command('trash')
    .description('list a tenant\'s deleted files (recoverable until the grace period ends)'))
    .requiredOption('--tenant <name>', 'the tenant')
    .action(action(async (_g, o: BackendFlags & { tenant: string }) => {
      const backend = await openBackend(o, 30 * 86400);
      try {
        const t = await backend.trash(o.tenant);
        for (const e of t) out().line(`${e.deletedAt.toISOString()}  ${e.type.padEnd(8)} ${e.name}  ${bytes(e.size)}`);
        out().result({ tenant: o.tenant, files: t.map((e) => ({ ...e, deletedAt: e.deletedAt.toISOString() })) });
      } finally {
        await backend.close();
      }
    }));
  backendOptions(store.command('undelete')
    .description('put a tenant\'s deleted files back (all, or those deleted since a time)'))
    .requiredOption('--tenant <name>', 'the tenant')
    .option('--since <time>', 'only files deleted at or after this time (ISO)')
    .option('--grace <duration>', 'the store\'s grace period (the retention restored files get on a locked bucket)', parseDuration, 30 * 86400)
    .action(action(async (_g, o: BackendFlags & { tenant: string; since?: string; grace: number }) => {
      const since = o.since === undefined ? -Infinity : Date.parse(o.since);
      if (Number.isNaN(since)) throw new HoldfastError('HF_USAGE', `--since '${o.since}': give a time like 2026-11-20T18:00:00Z`);
      const backend = await openBackend(o, o.grace);
      try {
        const n = await backend.undelete(o.tenant, (e) => e.deletedAt.getTime() >= since);
        out().line(`restored ${n} file(s) of tenant ${o.tenant}`);
        out().result({ tenant: o.tenant, restored: n });
      } finally {
        await backend.close();
      }
    }));
  backendOptions(store.command('purge')
    .description('delete for good what was deleted longer ago than the grace period'))
    .option('--grace <duration>', 'the grace period', parseDuration, 30 * 86400)
    .action(action(async (_g, o: BackendFlags & { grace: number }) => {
      const backend = await openBackend(o, o.grace);
      try {
        const n = await backend.purge(new Date(Date.now() - o.grace * 1000));
        out().line(`purged ${n} file(s)`);
        out().result({ purged: n });
      } finally {
        await backend.close();
      }
    }));

  const target = program.command('target').description('offsite replication targets of a repository');
  target.command('add')
    .description('add a target: a store reached at one or more endpoints')
    .argument('<name>', 'a name for the target')
    .requiredOption('--endpoint <list>', 'HOST:PORT[,HOST:PORT…], front-ends of one store, tried in order')
    .requiredOption('--ca <file>', 'the CA that issued the store\'s certificate')
    .requiredOption('--cert <file>', 'this appliance\'s certificate')
    .requiredOption('--key <file>', 'this appliance\'s key')
    .option('--servername <name>', 'the name to expect in the store\'s certificate (default: the endpoint\'s host)')
    .option('--rate <rate>', 'bandwidth cap, e.g. 20MiB/s', rateOption)
    .option('--window <spec>', 'a rate for some hours, e.g. "Mon-Fri 08:00-18:00=2MiB/s" (repeatable)', windowOption)
    .option('--spread', 'start at a random endpoint (load balancing) instead of the first')
    .action(action(async (g, name: string, o: TlsFlags & { endpoint: string; rate?: string; window?: string[]; spread?: boolean }) => {
      const registry = new TargetRegistry(repoLocation(g));
      await new LocalStorage(repoLocation(g)).assertExists();
      const t: TargetConfig = {
        name, endpoints: parseEndpoints(o.endpoint), ca: path.resolve(o.ca), cert: path.resolve(o.cert), key: path.resolve(o.key),
        ...(o.servername ? { servername: o.servername } : {}), rate: o.rate ?? null, windows: o.window ?? [], spread: o.spread ?? false,
        added: new Date().toISOString(),
      };
      await targetTls(t); // the files must be there and readable now, not at 2 am
      await registry.add(t);
      out().line(`added target ${name}: ${t.endpoints.map(endpointText).join(', ')}${t.rate ? `, rate ${t.rate}` : ''}${t.windows.length ? `, windows ${t.windows.join('; ')}` : ''}`);
      out().result(t);
    }));
  target.command('list')
    .description('list targets')
    .action(action(async (g) => {
      const all = await new TargetRegistry(repoLocation(g)).list();
      for (const t of all) out().line(`${t.name}  ${t.endpoints.map(endpointText).join(',')}  ${t.rate ?? 'unlimited'}${t.windows.length ? `  ${t.windows.join('; ')}` : ''}`);
      out().result({ targets: all });
    }));
  target.command('remove')
    .description('forget a target (the store keeps its copy)')
    .argument('<name>', 'the target')
    .action(action(async (g, name: string) => {
      await new TargetRegistry(repoLocation(g)).remove(name);
      out().line(`removed target ${name}`);
      out().result({ removed: name });
    }));
  target.command('status')
    .description('per target: reachable endpoint, bytes pending, last success, lag')
    .option('--target <name>', 'only this target')
    .action(action(async (g, o: { target?: string }) => {
      const location = repoLocation(g);
      const storage = new LocalStorage(location);
      await storage.assertExists();
      const registry = new TargetRegistry(location);
      const targets = o.target ? [await registry.get(o.target)] : await registry.list();
      const statuses = [];
      const files = await localFiles(storage);
      for (const t of targets) {
        const s = await targetStatus(storage, registry, t, { files });
        statuses.push(s);
        out().line(`${t.name}: ${s.reachable ? `reachable at ${s.reachable}` : 'UNREACHABLE'}; pending ${bytes(s.pendingBytes)} in ${s.pendingFiles} files` +
          `${s.live ? '' : ' (as of the last run)'}; ${s.snapshotsPending} snapshot(s) not offsite; lag ${duration(s.lagSeconds)}; last success ${ago(s.lastSuccess)}` +
          `${s.lastError ? `; last error ${s.lastError.code}: ${s.lastError.message}` : ''}`);
        for (const e of s.endpoints) out().line(`  ${e.endpoint}: ${e.reachable ? `ok (${e.rttMs} ms)` : e.error}`);
      }
      await storage.close();
      out().result({ targets: statuses });
    }));

  program.command('replicate')
    .description('send each target what it lacks (no passphrase needed: only encrypted files move)')
    .option('--target <name>', 'only this target (default: all)')
    .option('--global-rate <rate>', 'a cap shared by all targets, e.g. 50MiB/s', rateOption)
    .option('--no-deletes', 'do not mirror deletions (prune) to the stores')
    .action(action(async (g, o: { target?: string; globalRate?: string; deletes: boolean }) => {
      useStreamingHeap();
      const location = repoLocation(g);
      const storage = new LocalStorage(location);
      await storage.assertExists();
      const registry = new TargetRegistry(location);
      const targets = o.target ? [await registry.get(o.target)] : await registry.list();
      if (targets.length === 0) throw new HoldfastError('HF_TARGET_NOT_FOUND', 'this repository has no targets; add one with `holdfast target add`');
      // A shared lock: prune waits (or refuses) rather than delete packs being sent.
      const lock = await Lock.acquire(storage, 'shared', 'holdfast replicate');
      const progress = new Map<string, string>();
      out().startProgress(() => [...progress].map(([n, s]) => `${n}: ${s}`).join('  '));
      let runs: TargetRun[];
      try {
        runs = await replicateTargets(storage, registry, targets, {
          ...(o.globalRate ? { globalRate: parseRate(o.globalRate) } : {}), signal: ctx.signal, deletes: o.deletes,
          onProgress: (t, p) => progress.set(t, `${p.phase} ${p.files}/${p.filesTotal} files ${bytes(p.bytes)}/${bytes(p.bytesTotal)}`),
          onEvent: (t, e) => { if (e.event === 'failed') out().note(`${t}: ${e.endpoint}: ${e.message ?? 'failed'}; trying the next endpoint`); },
        });
      } finally {
        out().stopProgress();
        await lock.release();
        await storage.close();
      }
      for (const r of runs) {
        if (r.ok) {
          const x = r.result!;
          out().line(`${r.target}: ${x.sentFiles} files sent (${bytes(x.bytes)}; ${bytes(x.sent)} on the wire, ${bytes(x.resumed)} resumed), ` +
            `${x.present} already there, ${x.deleted} deleted, via ${x.endpoints.join(' -> ')} in ${duration(x.seconds)}`);
        } else {
          out().warn(`${r.target}: FAILED ${r.error!.code}: ${r.error!.message}`);
        }
      }
      out().result({ targets: runs });
      return runs.every((r) => r.ok) ? ctx.exit.ok : ctx.exit.failed;
    }));

  program.command('clone')
    .description('rebuild a repository from a store (a new box after a disaster); checks the passphrase or recovery key first')
    .requiredOption('--endpoint <list>', 'HOST:PORT[,HOST:PORT…] of the store')
    .requiredOption('--ca <file>', 'the CA that issued the store\'s certificate')
    .requiredOption('--cert <file>', 'the appliance certificate (its name is the tenant)')
    .requiredOption('--key <file>', 'its key')
    .option('--servername <name>', 'the name to expect in the store\'s certificate')
    .action(action(async (g, o: TlsFlags & { endpoint: string }) => {
      const location = repoLocation(g);
      const tls = await targetTls(o);
      const client = new TargetClient({ name: 'clone', endpoints: parseEndpoints(o.endpoint), tls, signal: ctx.signal });
      try {
        // Open the store's copy first: a wrong passphrase is found before anything is downloaded.
        const remoteStorage = new RemoteStorage(new TargetClient({ name: 'clone', endpoints: parseEndpoints(o.endpoint), tls }), 'the store');
        try {
          if ((await remoteStorage.list('config')).length === 0) {
            const w = (await client.connection()).welcome;
            throw new HoldfastError('HF_STORE_TENANT_NOT_FOUND',
              `store ${w.store} holds no repository for tenant ${w.tenant}; use the certificate of the appliance that replicated (its name is the tenant)`);
          }
          await Repository.open(remoteStorage, credentials(g));
        } finally {
          await remoteStorage.close();
        }
        const dest = new LocalStorage(location);
        if (fs.existsSync(path.join(location, 'config'))) out().note(`${location} holds an earlier clone; resuming`);
        else await dest.initialize();
        const started = performance.now();
        let got = 0;
        out().startProgress(() => `${duration((performance.now() - started) / 1000)}  ${bytes(got)}`);
        const r = await cloneRepository(client, dest, { signal: ctx.signal, onFile: (_t, _n, size) => { got += size; } });
        out().stopProgress();
        const repo = await Repository.open(dest, credentials(g));
        const snaps = (await listSnapshots(repo)).snapshots.length;
        await repo.close();
        out().line(`cloned tenant ${r.tenant} from store ${r.store}: ${r.files} files (${bytes(r.bytes)}), ${r.present} already here, ${snaps} snapshots, in ${duration(r.seconds)}`);
        out().result({ repository: path.resolve(location), ...r, snapshots: snaps });
      } finally {
        client.close();
      }
    }));

  const seed = program.command('seed').description('ship the first copy on a disk');
  seed.command('export')
    .description('write the repository\'s files to DIR for `holdfast store import`')
    .requiredOption('--to <dir>', 'the disk\'s directory')
    .action(action(async (g, o: { to: string }) => {
      const storage = new LocalStorage(repoLocation(g));
      await storage.assertExists();
      const lock = await Lock.acquire(storage, 'shared', 'holdfast seed export');
      try {
        const r = await exportSeed(storage, o.to);
        out().line(`wrote ${r.files} files (${bytes(r.bytes)}) to ${path.resolve(o.to)}; ship it and run \`holdfast store import\` at the store`);
        out().result({ to: path.resolve(o.to), ...r });
      } finally {
        await lock.release();
        await storage.close();
      }
    }));
}

/** `restore --from-target NAME`: the repository as the target holds it. */
export async function openFromTarget(g: GlobalOptions, name: string): Promise<Repository> {
  const t = await new TargetRegistry(repoLocation(g)).get(name);
  const storage = new RemoteStorage(await targetClient(t), `target ${name}`);
  try {
    return await Repository.open(storage, credentials(g));
  } catch (err) {
    await storage.close();
    throw err;
  }
}

