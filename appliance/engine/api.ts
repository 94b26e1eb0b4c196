import { timingSafeEqual } from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';

import { PROGRAM } from '../backup/index.ts';
import { ErrorCodes, HoldfastError, errorCode } from '../errors/index.ts';
import { EscrowKeyPair } from '../escrow/index.ts';
import { Repository, type SnapshotId, shortId } from '../repository/index.ts';
import { TARGET_NAME, type TargetConfig, localFiles, parseEndpoints, parseRate, parseWindows, targetStatus } from '../replication/index.ts';
import { type RetentionPolicy, applyPolicy, isEmptyPolicy, listSnapshots, resolveSnapshot } from '../snapshot/index.ts';
import { type SourceSpec, openSource, parseSourceUrl } from '../sources/index.ts';
import { LocalStorage } from '../storage/index.ts';
import { type Actor, LOCAL_ACTOR, type Permission, allows, verifyPassword } from './accounts.ts';
import type { Engine } from './engine.ts';
import { dataFiles } from './engine.ts';
import { escrowKeyOf, exportEscrow, saveEscrowKey } from './escrow-export.ts';
import { sourceCredentials } from './job-work.ts';
import { sourceHost } from './jobs.ts';
import { validateCron } from './scheduler.ts';
import { fileStream, nodeAt, snapshotPath, zipStream } from './snapshot-files.ts';
import { JOB_KINDS, type JobKind, type SourceSecret } from './state-store.ts';

/** One route of the appliance API: what it needs, and whether it works without a session. */
export interface ApiRoute {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  /** null: public (status, setup, login). */
  permission: Permission | null;
}

declare module 'fastify' {
  interface FastifyRequest {
    actor: Actor | null;
    sessionToken: string | null;
  }
}

export interface ApiServer {
  close(): Promise<void>;
}

const STATUS: Partial<Record<string, number>> = {
  HF_UNAUTHENTICATED: 401, HF_WRONG_CREDENTIALS: 401, HF_FORBIDDEN: 403, HF_CSRF: 403, HF_ACCOUNT_LOCKED: 423,
  HF_NOT_FOUND: 404, HF_SNAPSHOT_NOT_FOUND: 404, HF_PATH_NOT_FOUND: 404, HF_TARGET_NOT_FOUND: 404, HF_SOURCE_NOT_FOUND: 404,
  HF_CONFLICT: 409, HF_SETUP_DONE: 409, HF_JOB_BUSY: 409, HF_UPDATE_LOCKED: 409, HF_TARGET_EXISTS: 409, HF_REPO_LOCKED: 409,
  HF_SETUP_NEEDED: 409, HF_INVALID_ARGUMENT: 400, HF_USAGE: 400, HF_SOURCE_URL_INVALID: 400, HF_PKI_INVALID: 400,
  HF_BAD_RECOVERY_KEY: 400, HF_ESCROW_NOT_FOUND: 404,
};

/** Plain words for a status, as the console shows them. */
function statusOf(code: string | undefined): number {
  return (code && STATUS[code]) || (code && code in ErrorCodes ? 500 : 500);
}

function sendError(reply: FastifyReply, err: unknown): FastifyReply {
  const fastifyCode = (err as { statusCode?: number }).statusCode;
  let code = errorCode(err);
  if (!code || !(code in ErrorCodes)) code = fastifyCode && fastifyCode < 500 ? 'HF_INVALID_ARGUMENT' : 'HF_IO';
  const status = fastifyCode && fastifyCode < 500 && !(errorCode(err) ?? '').startsWith('HF_') ? fastifyCode : statusOf(code);
  const details = err instanceof HoldfastError ? err.details : undefined;
  return reply.code(status).send({ error: { code, message: err instanceof Error ? err.message : String(err), ...(details ? { details } : {}) } });
}

const sameToken = (a: string, b: string) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

const str = (v: unknown, what: string, max = 4096): string => {
  if (typeof v !== 'string' || v.length === 0 || v.length > max) throw new HoldfastError('HF_INVALID_ARGUMENT', `${what} must be a non-empty string`);
  return v;
};
const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** A source from an API body: { name, kind: 'local', paths } or { name, url: 'smb://…' | 'sftp://…' }. */
function sourceSpecOf(body: Record<string, unknown>): SourceSpec {
  if (typeof body.url === 'string' && body.url) return parseSourceUrl(body.url);
  if (body.kind === 'local') {
    const paths = body.paths;
    if (!Array.isArray(paths) || paths.length === 0 || !paths.every((p) => typeof p === 'string' && path.isAbsolute(p))) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', 'a local source names absolute paths (paths: ["/srv/data"])');
    }
    return { kind: 'local', paths: paths.map((p: string) => path.normalize(p).replace(/(.)\/+$/, '$1')) };
  }
  throw new HoldfastError('HF_INVALID_ARGUMENT', 'a source is { kind: "local", paths } or { url: "smb://USER@HOST/SHARE/PATH" | "sftp://USER@HOST/PATH" }');
}

function secretOf(body: Record<string, unknown>, old: SourceSecret = {}): SourceSecret {
  const s: SourceSecret = { ...old };
  if (typeof body.password === 'string') s.password = body.password;
  if (typeof body.identityKey === 'string') s.identityKey = body.identityKey;
  if (typeof body.hostKey === 'string') s.hostKey = body.hostKey;
  return s;
}

function policyOf(v: unknown): RetentionPolicy {
  if (typeof v !== 'object' || v === null) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a retention policy is an object such as { "daily": 7, "weekly": 4 }');
  const p: RetentionPolicy = {};
  for (const k of ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
    const n = (v as Record<string, unknown>)[k];
    if (n === undefined || n === null || n === 0) continue;
    if (!Number.isInteger(n) || (n as number) < 0 || (n as number) > 100_000) throw new HoldfastError('HF_INVALID_ARGUMENT', `${k} must be a whole number`);
    p[k] = n as number;
  }
  if (isEmptyPolicy(p)) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a retention policy keeps something: set at least one of last, hourly, daily, weekly, monthly, yearly');
  return p;
}

/** Where restores may write: under the restore area, or back where a local source's files came from. */
async function restoreTarget(engine: Engine, target: unknown, snapshotPaths: readonly string[], source: { kind: string; location: string }): Promise<string> {
  const restores = dataFiles(engine.dataDir).restores;
  if (target === undefined || target === null || target === '') {
    const dir = path.join(restores, new Date(engine.clock.now()).toISOString().replace(/[:.]/g, '-'));
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    return dir;
  }
  if (target === 'original') {
    // A share's or a server's paths name places on that server, not on this box.
    if (source.kind !== 'local') {
      throw new HoldfastError('HF_INVALID_ARGUMENT',
        `this snapshot came from ${source.location} (${source.kind}): restoring onto the server is not supported yet; ` +
        'restore into the restore area (or a restore root) and copy the files back from there');
    }
    if (!snapshotPaths.every((p) => path.isAbsolute(p))) throw new HoldfastError('HF_INVALID_ARGUMENT', 'cannot restore to the original place');
    return '/';
  }
  const t = snapshotPath(target, 'restore target');
  const allowed = [restores, ...engine.restoreRoots];
  if (!allowed.some((r) => t === r || t.startsWith(`${r}/`))) {
    throw new HoldfastError('HF_INVALID_ARGUMENT',
      `restores go below ${allowed.join(' or ')} (or back to where the files came from: "original"); ${t} is elsewhere`);
  }
  await fsp.mkdir(t, { recursive: true, mode: 0o700 });
  return t;
}

type Handler = (req: FastifyRequest, reply: FastifyReply, actor: Actor) => Promise<unknown>;
type RouteFn = (method: ApiRoute['method'], url: string, permission: Permission | null, handler: Handler) => void;

/** Every route of the API, without serving it (the tests check each one refuses a request without a session). */
export function apiRoutes(): ApiRoute[] {
  const out: ApiRoute[] = [];
  registerRoutes((method, url, permission) => { out.push({ method, url, permission }); }, null as unknown as Engine);
  return out;
}

/** Serves the appliance API (JSON over HTTP) on a unix socket. */
export async function startApi(engine: Engine, socketPath: string): Promise<ApiServer> {
  const app = Fastify({ logger: false, bodyLimit: 1 << 20, return503OnClosing: true });
  const route: RouteFn = (method, url, permission, handler) => {
    app.route({
      method, url,
      handler: async (req, reply) => {
        const actor = req.actor ?? { user: 'anonymous', role: 'viewer' as const };
        if (permission === 'local' && req.actor !== LOCAL_ACTOR) {
          throw new HoldfastError('HF_FORBIDDEN', `${actor.user} (${actor.role}) may not do this: only the box itself may (Authorization: Local with DATA_DIR/local.token, as the CLI and the agent do)`);
        }
        if (permission !== null && permission !== 'local' && !allows(actor.role, permission)) {
          throw new HoldfastError('HF_FORBIDDEN', `${actor.user} (${actor.role}) may not do this: it needs ${permission === 'configure' ? 'an admin' : 'an operator or admin'}`);
        }
        return handler(req, reply, actor);
      },
    });
  };
  const PUBLIC = new Set(['GET /v1/status', 'POST /v1/setup', 'POST /v1/login']);
  app.decorateRequest('actor', null);
  app.decorateRequest('sessionToken', null);
  app.addHook('onRequest', async (req) => {
    const auth = req.headers.authorization ?? '';
    const [scheme, token] = auth.split(' ', 2) as [string, string | undefined];
    const key = `${req.method} ${req.routeOptions.url ?? req.url.split('?')[0]}`;
    if (scheme === 'Local' && token && sameToken(token, engine.localToken)) {
      req.actor = LOCAL_ACTOR;
      return;
    }
    if (key === 'GET /v1/metrics' && scheme === 'Metrics' && token && sameToken(token, engine.metricsToken)) {
      req.actor = { user: 'metrics', role: 'viewer' };
      return;
    }
    if (scheme === 'Bearer' && token) {
      const actor = await engine.accounts.session(token);
      if (actor) {
        req.actor = actor;
        req.sessionToken = token;
        // A session is a browser's: every change carries its CSRF token.
        if (req.method !== 'GET' && req.method !== 'HEAD' && !sameToken(String(req.headers['x-csrf-token'] ?? ''), actor.csrf ?? '')) {
          throw new HoldfastError('HF_CSRF', 'this request changes something but carries no valid CSRF token: reload the page');
        }
        return;
      }
    }
    if (!PUBLIC.has(key)) throw new HoldfastError('HF_UNAUTHENTICATED', 'log in first (no valid session)');
  });
  app.setErrorHandler((err, _req, reply) => sendError(reply, err));
  app.setNotFoundHandler((_req, reply) => sendError(reply, new HoldfastError('HF_NOT_FOUND', 'no such API route')));

  registerRoutes(route, engine);

  await fsp.rm(socketPath, { force: true });
  await app.listen({ path: socketPath });
  await fsp.chmod(socketPath, 0o660);
  return { close: () => app.close() };
}

/** The routes; `engine` is used only when a handler runs. */
function registerRoutes(route: RouteFn, engine: Engine): void {
  const audit = (actor: Actor, action: string, detail: Record<string, unknown>) => engine.state.audit(actor.user, action, detail, engine.clock.now());
  const body = (req: FastifyRequest) => (typeof req.body === 'object' && req.body !== null ? req.body as Record<string, unknown> : {});
  const snapshotId = async (ref: string): Promise<{ id: SnapshotId; tree: string; time: string; source: { kind: string; location: string } }> => {
    const { snapshots } = await listSnapshots(engine.repo, { cached: true });
    const s = resolveSnapshot(snapshots, ref);
    return { id: s.id, tree: s.snapshot.tree, time: s.snapshot.time, source: s.snapshot.source };
  };

  // ---- public ----
  route('GET', '/v1/status', null, async () => ({
    program: PROGRAM, hostname: os.hostname(), setupNeeded: await engine.accounts.needsSetup(),
  }));
  route('POST', '/v1/setup', null, async (req) => {
    const b = body(req);
    await engine.accounts.setup(b.user, b.password);
    const recovery = await engine.state.getSealed<{ key: string }>('recovery-key');
    await engine.state.setSealed('recovery-key', null);
    return { ok: true, recoveryKey: recovery?.key ?? null };
  });
  route('POST', '/v1/login', null, async (req) => {
    const b = body(req);
    const r = await engine.accounts.login(b.user, b.password, typeof b.from === 'string' ? b.from.slice(0, 100) : 'api');
    return { token: r.token, user: r.actor.user, role: r.actor.role, csrf: r.actor.csrf };
  });

  // ---- session ----
  route('GET', '/v1/session', 'read', async (_req, _reply, a) => ({ user: a.user, role: a.role, csrf: a.csrf ?? null }));
  route('POST', '/v1/logout', 'read', async (req, _reply, a) => {
    if (req.sessionToken) await engine.accounts.logout(req.sessionToken, a);
    return { ok: true };
  });
  route('PUT', '/v1/me/password', 'read', async (req, _reply, a) => {
    const b = body(req);
    const u = await engine.state.user(a.user);
    if (!u) throw new HoldfastError('HF_FORBIDDEN', 'only console users have a password');
    if (typeof b.old !== 'string' || !(await verifyPassword(b.old, u.password))) throw new HoldfastError('HF_WRONG_CREDENTIALS', 'the current password is wrong');
    await engine.accounts.setPassword(a.user, b.password, a);
    return { ok: true };
  });

  // ---- dashboard ----
  route('GET', '/v1/dashboard', 'read', async () => dashboard(engine));

  // ---- sources ----
  route('GET', '/v1/sources', 'read', async () => {
    const out = [];
    for (const s of await engine.state.sources()) {
      const secret = await engine.state.sourceSecret(s.name);
      out.push({ ...s, secrets: { password: secret.password !== undefined, identityKey: secret.identityKey !== undefined, hostKey: secret.hostKey ?? null } });
    }
    return { sources: out };
  });
  route('POST', '/v1/sources/test', 'configure', async (req) => {
    const b = body(req);
    const spec = sourceSpecOf(b);
    const secret = secretOf(b, typeof b.name === 'string' && await engine.state.source(b.name) ? await engine.state.sourceSecret(b.name) : {});
    try {
      const source = await openSource(spec, sourceCredentials(secret));
      try {
        const listed = [];
        for (const p of spec.paths) {
          await source.stat(Buffer.from(p));
          const l = await source.list(Buffer.from(p)).catch(() => null);
          listed.push({ path: p, entries: l?.entries.length ?? null, sample: l?.entries.slice(0, 8).map((e) => e.name.toString('utf8')) ?? [] });
        }
        return { ok: true, kind: spec.kind, host: spec.kind === 'local' ? os.hostname() : spec.host, paths: listed, hostKey: secret.hostKey ?? null };
      } finally {
        await source.close();
      }
    } catch (err) {
      return { ok: false, error: { code: errorCode(err) ?? 'HF_IO', message: (err as Error).message, ...(err instanceof HoldfastError && err.details ? { details: err.details } : {}) } };
    }
  });
  route('POST', '/v1/sources', 'configure', async (req, _reply, a) => {
    const b = body(req);
    const name = str(b.name, 'name', 63);
    if (!NAME.test(name)) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a source name is lower-case letters, digits and "-", starting with a letter or digit');
    if (await engine.state.source(name)) throw new HoldfastError('HF_CONFLICT', `a source named ${name} exists`);
    const spec = sourceSpecOf(b);
    await engine.state.putSource(name, spec, secretOf(b), new Date(engine.clock.now()).toISOString());
    if (typeof b.schedule === 'string' && b.schedule) {
      await engine.state.addSchedule({ job: 'backup', subject: name, cron: validateCron(b.schedule), enabled: true, lastFire: null });
    }
    await audit(a, 'source.add', { name, kind: spec.kind, paths: spec.paths });
    return { ok: true, source: await engine.state.source(name) };
  });
  route('PUT', '/v1/sources/:name', 'configure', async (req, _reply, a) => {
    const name = (req.params as { name: string }).name;
    const old = await engine.state.source(name);
    if (!old) throw new HoldfastError('HF_NOT_FOUND', `no source named ${name}`);
    const b = body(req);
    const spec = b.url || b.kind ? sourceSpecOf(b) : old.spec;
    await engine.state.putSource(name, spec, secretOf(b, await engine.state.sourceSecret(name)), new Date(engine.clock.now()).toISOString());
    await audit(a, 'source.change', { name, kind: spec.kind, paths: spec.paths, secrets: Object.keys(secretOf(b)).filter((k) => k in b) });
    return { ok: true, source: await engine.state.source(name) };
  });
  route('DELETE', '/v1/sources/:name', 'configure', async (req, _reply, a) => {
    const name = (req.params as { name: string }).name;
    if (!(await engine.state.source(name))) throw new HoldfastError('HF_NOT_FOUND', `no source named ${name}`);
    await engine.state.removeSource(name);
    await audit(a, 'source.remove', { name });
    return { ok: true };
  });

  // ---- schedules and retention ----
  route('GET', '/v1/schedules', 'read', async () => ({
    schedules: (await engine.state.schedules()).map((s) => ({ ...s, next: s.enabled ? engine.scheduler.next(s.cron) : null })),
  }));
  const scheduleOf = async (b: Record<string, unknown>) => {
    const job = b.job as JobKind;
    if (!JOB_KINDS.includes(job) || job === 'restore') throw new HoldfastError('HF_INVALID_ARGUMENT', 'a schedule runs backup, replicate, prune or verify');
    const subject = typeof b.subject === 'string' && b.subject ? b.subject : null;
    if (job === 'backup' && (!subject || !(await engine.state.source(subject)))) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a backup schedule names one of the sources');
    return { job, subject, cron: validateCron(b.cron), enabled: b.enabled !== false };
  };
  route('POST', '/v1/schedules', 'configure', async (req, _reply, a) => {
    const s = await scheduleOf(body(req));
    const id = await engine.state.addSchedule({ ...s, lastFire: null });
    await audit(a, 'schedule.add', { id, ...s });
    return { ok: true, id };
  });
  route('PUT', '/v1/schedules/:id', 'configure', async (req, _reply, a) => {
    const id = Number((req.params as { id: string }).id);
    const s = await scheduleOf(body(req));
    await engine.state.updateSchedule(id, { ...s, lastFire: null });
    await audit(a, 'schedule.change', { id, ...s });
    return { ok: true };
  });
  route('DELETE', '/v1/schedules/:id', 'configure', async (req, _reply, a) => {
    const id = Number((req.params as { id: string }).id);
    await engine.state.removeSchedule(id);
    await audit(a, 'schedule.remove', { id });
    return { ok: true };
  });
  route('GET', '/v1/retention', 'read', async () => ({ policy: await engine.state.retention(), protected: await engine.state.protectedSnapshots() }));
  route('PUT', '/v1/retention', 'configure', async (req, _reply, a) => {
    const b = body(req);
    const policy = b.policy === null ? null : policyOf(b.policy);
    await engine.state.setRetention(policy);
    await audit(a, 'retention.change', { policy });
    return { ok: true, policy };
  });
  route('POST', '/v1/retention/preview', 'read', async (req) => {
    const policy = policyOf(body(req).policy);
    const { snapshots } = await listSnapshots(engine.repo, { cached: true });
    const protect = new Set(await engine.state.protectedSnapshots());
    const decisions = applyPolicy(snapshots, policy).map((d) => ({
      snapshot: d.entry.id, short: shortId(d.entry.id), time: d.entry.snapshot.time, host: d.entry.snapshot.host, paths: d.entry.snapshot.paths,
      source: d.entry.snapshot.tags.find((t) => t.startsWith('source:'))?.slice(7) ?? null,
      keep: d.keep || protect.has(d.entry.id), reasons: protect.has(d.entry.id) && !d.keep ? ['protected'] : d.reasons,
    }));
    return { decisions, keep: decisions.filter((d) => d.keep).length, forget: decisions.filter((d) => !d.keep).length };
  });

  // ---- snapshots: browse, search, compare, download ----
  route('GET', '/v1/snapshots', 'read', async () => {
    const { snapshots, damaged } = await listSnapshots(engine.repo, { cached: true });
    const protect = new Set(await engine.state.protectedSnapshots());
    return {
      snapshots: snapshots.map((s) => ({
        id: s.id, short: shortId(s.id), time: s.snapshot.time, host: s.snapshot.host, paths: s.snapshot.paths, tags: s.snapshot.tags,
        source: s.snapshot.tags.find((t) => t.startsWith('source:'))?.slice(7) ?? null, origin: s.snapshot.source.kind, stats: s.snapshot.stats, protected: protect.has(s.id),
      })),
      damaged: damaged.map((d) => ({ id: d.id, error: d.error.message })),
    };
  });
  route('PUT', '/v1/snapshots/:id/protected', 'configure', async (req, _reply, a) => {
    const s = await snapshotId((req.params as { id: string }).id);
    const on = body(req).protected !== false;
    await engine.state.setProtected(s.id, on, a.user, new Date(engine.clock.now()).toISOString());
    await audit(a, on ? 'snapshot.protect' : 'snapshot.unprotect', { snapshot: s.id });
    return { ok: true, protected: on };
  });
  route('GET', '/v1/snapshots/:id/entries', 'read', async (req) => {
    const q = req.query as { path?: string; after?: string; limit?: string };
    const s = await snapshotId((req.params as { id: string }).id);
    await engine.catalogued(s.id).catch(() => undefined); // a snapshot just written is catalogued before it is browsed
    const page = await engine.catalog.listPage(s.id, snapshotPath(q.path ?? '/'), {
      ...(q.after !== undefined ? { after: q.after } : {}), ...(q.limit ? { limit: Number(q.limit) } : {}),
    });
    return { snapshot: s.id, time: s.time, ...page };
  });
  route('GET', '/v1/find', 'read', async (req) => {
    const q = req.query as { pattern?: string; limit?: string };
    const matches = await engine.catalog.find(str(q.pattern, 'pattern', 512), { ignoreCase: true, limit: Math.min(Number(q.limit ?? 200), 2000) });
    return { matches };
  });
  route('GET', '/v1/versions', 'read', async (req) => {
    const p = snapshotPath((req.query as { path?: string }).path);
    return { path: p, versions: (await engine.catalog.versions(p)).filter((v) => v.entry !== null) };
  });
  route('GET', '/v1/diff', 'read', async (req) => {
    const q = req.query as { a?: string; b?: string; path?: string };
    const [a, b] = await Promise.all([snapshotId(str(q.a, 'a')), snapshotId(str(q.b, 'b'))]);
    return { a: a.id, b: b.id, path: snapshotPath(q.path ?? '/'), ...(await engine.catalog.diff(a.id, b.id, snapshotPath(q.path ?? '/'))) };
  });
  const attachment = (name: string) => `attachment; filename="${name.replace(/[^\x20-\x7e]|["\\]/g, '_')}"; filename*=UTF-8''${encodeURIComponent(name)}`;
  route('GET', '/v1/snapshots/:id/file', 'restore', async (req, reply, a) => {
    const s = await snapshotId((req.params as { id: string }).id);
    const p = snapshotPath((req.query as { path?: string }).path);
    const node = await nodeAt(engine.repo, s.tree as never, p);
    if (node.type !== 'file') throw new HoldfastError('HF_INVALID_ARGUMENT', `${p} is a ${node.type}, not a file: download a folder as a zip`);
    await audit(a, 'download.file', { snapshot: s.id, path: p, size: node.size });
    reply.header('content-type', 'application/octet-stream').header('content-length', String(node.size))
      .header('content-disposition', attachment(path.posix.basename(p)));
    return reply.send(fileStream(engine.repo, node));
  });
  route('GET', '/v1/snapshots/:id/zip', 'restore', async (req, reply, a) => {
    const s = await snapshotId((req.params as { id: string }).id);
    const p = snapshotPath((req.query as { path?: string }).path ?? '/');
    const root = p === '/' ? { type: 'dir', subtree: s.tree } as never : await nodeAt(engine.repo, s.tree as never, p);
    if ((root as { type: string }).type !== 'dir') throw new HoldfastError('HF_INVALID_ARGUMENT', `${p} is not a folder: download it as a file`);
    const base = p === '/' ? `snapshot-${shortId(s.id)}` : path.posix.basename(p);
    await audit(a, 'download.zip', { snapshot: s.id, path: p });
    reply.header('content-type', 'application/zip').header('content-disposition', attachment(`${base}.zip`));
    return reply.send(zipStream(engine.repo, root, base));
  });

  // ---- restores and jobs ----
  route('POST', '/v1/restores', 'restore', async (req, _reply, a) => {
    const b = body(req);
    const s = await snapshotId(str(b.snapshot, 'snapshot'));
    const paths = Array.isArray(b.paths) ? b.paths.map((p) => snapshotPath(p)) : [];
    const target = await restoreTarget(engine, b.target, paths, s.source);
    const { job } = await engine.runner.request('restore', null, a.user, { snapshot: s.id, paths, target });
    await audit(a, 'restore', { snapshot: s.id, paths, target, job: job.id });
    return { ok: true, job };
  });
  route('GET', '/v1/jobs', 'read', async (req) => {
    const q = req.query as { limit?: string; before?: string; kind?: string; subject?: string };
    return {
      jobs: await engine.state.jobs({
        limit: Math.min(Number(q.limit ?? 50), 500), ...(q.before ? { before: Number(q.before) } : {}),
        ...(q.kind && JOB_KINDS.includes(q.kind as JobKind) ? { kind: q.kind as JobKind } : {}), ...(q.subject ? { subject: q.subject } : {}),
      }),
      running: engine.runner.running(),
    };
  });
  route('GET', '/v1/jobs/:id', 'read', async (req) => {
    const id = Number((req.params as { id: string }).id);
    const live = engine.runner.running().find((j) => j.id === id);
    const job = live ?? await engine.state.job(id);
    if (!job) throw new HoldfastError('HF_NOT_FOUND', `no job ${id}`);
    return { job };
  });
  route('POST', '/v1/jobs', 'run', async (req, _reply, a) => {
    const b = body(req);
    const kind = b.kind as JobKind;
    if (!JOB_KINDS.includes(kind) || kind === 'restore') throw new HoldfastError('HF_INVALID_ARGUMENT', 'run one of backup, replicate, prune, verify (restores: POST /v1/restores)');
    if (kind === 'prune' && !allows(a.role, 'configure')) throw new HoldfastError('HF_FORBIDDEN', 'pruning deletes data: an admin starts it');
    const subject = typeof b.subject === 'string' && b.subject ? b.subject : null;
    if (kind === 'backup' && (!subject || !(await engine.state.source(subject)))) throw new HoldfastError('HF_NOT_FOUND', `no source named ${subject ?? '(none)'}`);
    const r = await engine.runner.request(kind, subject, a.user);
    await audit(a, 'job.run', { kind, subject, job: r.job.id, existing: r.existing });
    return { ok: true, ...r };
  });
  route('POST', '/v1/jobs/:id/cancel', 'run', async (req, _reply, a) => {
    const id = Number((req.params as { id: string }).id);
    const job = await engine.runner.cancel(id, a.user);
    await audit(a, 'job.cancel', { job: id });
    return { ok: true, job };
  });

  // ---- replication targets ----
  route('GET', '/v1/targets', 'read', async () => {
    const out = [];
    const targets = await engine.targets.list();
    const files = targets.length > 0 ? await localFiles(engine.repo.storage) : [];
    for (const t of targets) {
      const s = await targetStatus(engine.repo.storage, engine.targets, t, { probe: false, files });
      out.push({ name: t.name, endpoints: t.endpoints.map((e) => `${e.host}:${e.port}`), rate: t.rate, windows: t.windows, spread: t.spread, added: t.added, status: s });
    }
    return { targets: out };
  });
  route('POST', '/v1/targets/:name/probe', 'read', async (req) => {
    const t = await engine.targets.get((req.params as { name: string }).name);
    return { status: await targetStatus(engine.repo.storage, engine.targets, t) };
  });
  route('POST', '/v1/targets', 'configure', async (req, _reply, a) => {
    const b = body(req);
    const name = str(b.name, 'name', 63);
    if (!TARGET_NAME.test(name)) throw new HoldfastError('HF_INVALID_ARGUMENT', 'a target name is lower-case letters, digits and "-"');
    const dir = path.join(dataFiles(engine.dataDir).pki, 'targets', name);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const pem = async (field: string, file: string) => {
      const v = str(b[field], field, 64 << 10);
      if (!/-----BEGIN [A-Z ]+-----/.test(v)) throw new HoldfastError('HF_PKI_INVALID', `${field} must be PEM text (-----BEGIN …-----)`);
      const p = path.join(dir, file);
      await fsp.writeFile(p, v, { mode: 0o600 });
      return p;
    };
    const rate = typeof b.rate === 'string' && b.rate ? b.rate : null;
    if (rate) parseRate(rate);
    const windows = Array.isArray(b.windows) ? b.windows.filter((w): w is string => typeof w === 'string' && w.length > 0) : [];
    for (const w of windows) parseWindows(w);
    const t: TargetConfig = {
      name, endpoints: parseEndpoints(str(b.endpoints, 'endpoints')), ca: await pem('ca', 'ca.crt'), cert: await pem('cert', 'appliance.crt'),
      key: await pem('key', 'appliance.key'), rate, windows, spread: b.spread === true, added: new Date(engine.clock.now()).toISOString(),
      ...(typeof b.servername === 'string' && b.servername ? { servername: b.servername } : {}),
    };
    await engine.targets.add(t);
    await audit(a, 'target.add', { name, endpoints: b.endpoints, rate, windows });
    return { ok: true };
  });
  route('DELETE', '/v1/targets/:name', 'configure', async (req, _reply, a) => {
    const name = (req.params as { name: string }).name;
    await engine.targets.remove(name);
    await audit(a, 'target.remove', { name });
    return { ok: true };
  });

  // ---- users, audit, update lock, metrics ----
  route('GET', '/v1/users', 'configure', async () => ({
    users: (await engine.state.users()).map((u) => ({ name: u.name, role: u.role, created: u.created, lockedUntil: u.lockedUntil > engine.clock.now() ? new Date(u.lockedUntil).toISOString() : null })),
  }));
  route('POST', '/v1/users', 'configure', async (req, _reply, a) => {
    const b = body(req);
    await engine.accounts.addUser(b.user, b.password, b.role, a);
    return { ok: true };
  });
  route('PUT', '/v1/users/:name', 'configure', async (req, _reply, a) => {
    const name = (req.params as { name: string }).name;
    const b = body(req);
    if (b.role !== undefined) await engine.accounts.setRole(name, b.role, a);
    if (b.password !== undefined) await engine.accounts.setPassword(name, b.password, a);
    return { ok: true };
  });
  route('DELETE', '/v1/users/:name', 'configure', async (req, _reply, a) => {
    await engine.accounts.removeUser((req.params as { name: string }).name, a);
    return { ok: true };
  });
  route('GET', '/v1/audit', 'configure', async (req) => {
    const q = req.query as { limit?: string; before?: string };
    return { entries: await engine.state.auditLog(Math.min(Number(q.limit ?? 200), 1000), q.before ? Number(q.before) : undefined) };
  });
  route('POST', '/v1/update-lock', 'configure', async (req, _reply, a) => {
    const holder = typeof body(req).holder === 'string' ? String(body(req).holder) : a.user;
    engine.runner.acquireUpdateLock(holder);
    await audit(a, 'update-lock.acquire', { holder });
    return { ok: true, holder };
  });
  route('DELETE', '/v1/update-lock', 'configure', async (req, _reply, a) => {
    const holder = (req.query as { holder?: string }).holder ?? a.user;
    engine.runner.releaseUpdateLock(holder);
    await audit(a, 'update-lock.release', { holder });
    return { ok: true };
  });
  route('GET', '/v1/metrics', 'read', async (_req, reply) => {
    reply.header('content-type', engine.metrics.contentType);
    return engine.metrics.text();
  });

  // ---- configuration escrow (docs/DESIGN.md, "Configuration escrow") ----
  // The sealed configuration, for the agent to hand to the fleet. Only the
  // box itself: it holds every secret (sealed for the recovery key).
  route('GET', '/v1/escrow', 'local', async (_req, reply) => {
    const e = await exportEscrow(engine);
    reply.header('content-type', 'application/octet-stream').header('cache-control', 'no-store')
      .header('x-holdfast-escrow-sha256', e.digest).header('x-holdfast-escrow-key-id', e.keyId);
    return reply.send(e.blob);
  });
  route('GET', '/v1/escrow/key', 'read', async () => {
    const k = await escrowKeyOf(engine.state);
    return { key: k ? { keyId: k.keyId, set: k.set, by: k.by } : null };
  });
  route('PUT', '/v1/escrow/key', 'configure', async (req, _reply, a) => {
    const recoveryKey = str(body(req).recoveryKey, 'recoveryKey', 200);
    const pair = EscrowKeyPair.fromRecoveryKey(recoveryKey); // HF_BAD_RECOVERY_KEY when malformed
    // The key must be this repository's: it is what opens the repository (and so the escrow) after a disaster.
    const check = await Repository.open(new LocalStorage((await engine.repoCredentials()).dir), { recoveryKey });
    try {
      if (check.id !== engine.repo.id) throw new HoldfastError('HF_BAD_RECOVERY_KEY', 'the recovery key opens another repository than the engine\'s');
    } finally {
      await check.close();
    }
    const k = await saveEscrowKey(engine.state, pair.publicKey, 'admin', new Date(engine.clock.now()).toISOString());
    await audit(a, 'escrow.key', { keyId: k.keyId });
    return { ok: true, keyId: k.keyId };
  });

  // ---- live events (server-sent events) ----
  route('GET', '/v1/events', 'read', async (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.write(`event: hello\ndata: ${JSON.stringify({ running: engine.runner.running() })}\n\n`);
    const off = engine.events.on((e) => { res.write(`event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`); });
    const beat = setInterval(() => res.write(': keepalive\n\n'), 15_000);
    req.raw.on('close', () => {
      off();
      clearInterval(beat);
    });
  });

}

/** Everything the dashboard shows, in one answer. */
async function dashboard(engine: Engine): Promise<Record<string, unknown>> {
  const now = engine.clock.now();
  const [sources, { snapshots }, schedules, targets, history, recovery, escrowKey] = await Promise.all([
    engine.state.sources(), listSnapshots(engine.repo, { cached: true }), engine.state.schedules(), engine.targets.list(),
    engine.state.storageHistory(now - 90 * 86_400_000), engine.state.getSealed('recovery-key'), escrowKeyOf(engine.state),
  ]);
  const warnings: { severity: 'error' | 'warning' | 'info'; message: string; action: string }[] = [];
  const perSource = [];
  for (const s of sources) {
    const [last] = await engine.state.jobs({ kind: 'backup', subject: s.name, limit: 1, states: ['done', 'failed', 'cancelled'] });
    const snaps = snapshots.filter((x) => x.snapshot.tags.includes(`source:${s.name}`));
    const latest = snaps.at(-1) ?? null;
    perSource.push({
      name: s.name, kind: s.spec.kind, host: sourceHost(s), paths: s.spec.paths,
      lastJob: last ? { id: last.id, state: last.state, finished: last.finished, error: last.error, warnings: (last.result as { warnings?: number } | null)?.warnings ?? 0 } : null,
      lastSnapshot: latest ? { id: latest.id, time: latest.snapshot.time, bytes: latest.snapshot.stats.bytes, files: latest.snapshot.stats.files } : null,
      snapshots: snaps.length,
      scheduled: schedules.some((x) => x.job === 'backup' && x.subject === s.name && x.enabled),
    });
    if (last?.state === 'failed') warnings.push({ severity: 'error', message: `the last backup of ${s.name} failed: ${last.error?.message ?? ''}`, action: 'check the source, then run the backup again' });
    if (last && (last.result as { warnings?: number } | null)?.warnings) warnings.push({ severity: 'warning', message: `the last backup of ${s.name} could not read ${(last.result as { warnings: number }).warnings} file(s)`, action: 'see the job for the list' });
    if (!latest) warnings.push({ severity: 'warning', message: `${s.name} has no snapshot yet`, action: 'run a backup' });
    else if (now - Date.parse(latest.snapshot.time) > 2 * 86_400_000) warnings.push({ severity: 'warning', message: `the newest snapshot of ${s.name} is older than two days`, action: 'check its schedule and its last jobs' });
    if (!schedules.some((x) => x.job === 'backup' && x.subject === s.name && x.enabled)) warnings.push({ severity: 'info', message: `${s.name} has no backup schedule`, action: 'add one under Schedules' });
  }
  const perTarget = [];
  const files = targets.length > 0 ? await localFiles(engine.repo.storage) : [];
  for (const t of targets) {
    const st = await targetStatus(engine.repo.storage, engine.targets, t, { probe: false, files });
    perTarget.push({ name: t.name, lagSeconds: st.lagSeconds, pendingBytes: st.pendingBytes, snapshotsPending: st.snapshotsPending, lastSuccess: st.lastSuccess, lastError: st.lastError });
    if (st.lastError && (!st.lastSuccess || Date.parse(st.lastError.at) > Date.parse(st.lastSuccess))) warnings.push({ severity: 'error', message: `replication to ${t.name} failed: ${st.lastError.message}`, action: 'check the target, then replicate again' });
    else if (st.lagSeconds > 86_400) warnings.push({ severity: 'warning', message: `${t.name} lags ${Math.round(st.lagSeconds / 3600)} hours behind`, action: 'check its bandwidth windows and schedule' });
  }
  if (targets.length === 0 && sources.length > 0) warnings.push({ severity: 'warning', message: 'there is no offsite copy: no replication target is set up', action: 'add a target under Replication' });
  const [verify] = await engine.state.jobs({ kind: 'verify', limit: 1, states: ['done', 'failed'] });
  if (verify?.state === 'failed') warnings.push({ severity: 'error', message: `verify found damage: ${verify.error?.message ?? ''}`, action: 'run holdfast check --read-data, and see docs/OPERATIONS.md' });
  if (recovery) warnings.push({ severity: 'warning', message: 'the repository\'s recovery key has not been shown to an admin yet', action: 'finish setup' });
  if (!escrowKey) warnings.push({ severity: 'warning', message: 'the fleet cannot keep this box\'s configuration: it has no escrow key (its repository was adopted)', action: 'enter the repository\'s recovery key once: on the box, holdfast escrow set-key --recovery-key-file FILE' });
  if (engine.runner.updateLockHolder) warnings.push({ severity: 'info', message: `an update holds the job lock (${engine.runner.updateLockHolder}); jobs wait`, action: 'none: it is released after the update' });
  const last = history.at(-1) ?? null;
  return {
    now: new Date(now).toISOString(),
    sources: perSource,
    targets: perTarget,
    storage: {
      repoBytes: last?.repoBytes ?? null, logicalBytes: last?.logicalBytes ?? null, snapshots: snapshots.length,
      dedupRatio: last && last.repoBytes > 0 ? Math.round((last.logicalBytes / last.repoBytes) * 100) / 100 : null,
      history: history.map((h) => ({ at: h.at, repoBytes: h.repoBytes, logicalBytes: h.logicalBytes })),
    },
    running: engine.runner.running(),
    warnings,
  };
}

