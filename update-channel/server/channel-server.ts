import { timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';

import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';

import { HoldfastError, errorCode } from '../../appliance/errors/index.ts';
import type { BoxRecord } from '../fleet/fleet-store.ts';
import type { FleetService } from '../fleet/fleet-service.ts';
import { refreshSnapshot, refreshTimestamp } from '../tuf/index.ts';
import { channelFiles } from './channel-files.ts';

const STATUS: Record<string, number> = {
  HF_FLEET_UNAUTHORIZED: 401, HF_UNAUTHENTICATED: 401, HF_ENROLL_TOKEN: 403, HF_FORBIDDEN: 403, HF_ENROLL_CSR: 400,
  HF_INVALID_ARGUMENT: 400, HF_USAGE: 400, HF_NOT_FOUND: 404, HF_ESCROW_NOT_FOUND: 404, HF_UPDATE_NOT_FOUND: 404, HF_CONFLICT: 409,
};
const PUBLIC_DIR = path.join(import.meta.dirname, 'public');
/** Re-sign the TUF timestamp this often (its expiry is a day: boxes never see it lapse while the service runs). */
const TIMESTAMP_REFRESH_MS = 3_600_000;

export interface ChannelServerOptions {
  /** The channel's directory (channel-files.ts). */
  dir: string;
  fleet: FleetService;
  host: string;
  port: number;
  log: Logger;
  /** Tests shorten it; 0 turns the timer off. */
  timestampRefreshMs?: number;
}

export interface ChannelServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

declare module 'fastify' {
  interface FastifyRequest { box?: BoxRecord }
}

/** The serial of a client certificate the TLS layer verified against the vendor CA, or null. */
function verifiedSerial(req: FastifyRequest): string | null {
  const socket = req.raw.socket as TLSSocket;
  if (!socket.authorized) return null;
  const c = socket.getPeerCertificate();
  return c && typeof c.serialNumber === 'string' && c.serialNumber ? c.serialNumber.toLowerCase() : null;
}

/** Serves a file with Range support (resumable release downloads), refusing paths outside `root`. */
async function sendFile(root: string, rel: string, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const file = path.resolve(root, rel);
  if (!file.startsWith(root + path.sep) || rel.split('/').some((p) => p === '..' || p === '')) {
    throw new HoldfastError('HF_NOT_FOUND', 'no such file');
  }
  let size: number;
  try {
    const st = await fsp.stat(file);
    if (!st.isFile()) throw new HoldfastError('HF_NOT_FOUND', 'no such file');
    size = st.size;
  } catch (err) {
    if (errorCode(err) === 'ENOENT') throw new HoldfastError('HF_NOT_FOUND', `${rel} is not published`);
    throw err;
  }
  const range = /^bytes=(\d+)-$/.exec(String(req.headers.range ?? ''));
  const start = range ? Number(range[1]) : 0;
  if (start > size) {
    reply.code(416).header('content-range', `bytes */${size}`);
    await reply.send();
    return;
  }
  reply.header('accept-ranges', 'bytes').header('cache-control', 'no-store').type(rel.endsWith('.json') ? 'application/json' : 'application/octet-stream');
  if (range) reply.code(206).header('content-range', `bytes ${start}-${size - 1}/${size}`);
  reply.header('content-length', String(size - start));
  await reply.send(fs.createReadStream(file, { start }));
}

/**
 * The update channel's HTTPS service: enrollment (no client certificate
 * yet), the box API (client certificate from the vendor CA, checked against
 * the fleet's records on every request: a revoked box gets 401 everywhere),
 * the TUF repository (metadata and release bundles, resumable), and the
 * vendor's fleet API and page (bearer token DIR/vendor.token).
 */
export async function startChannelServer(o: ChannelServerOptions): Promise<ChannelServer> {
  const files = channelFiles(o.dir);
  const [key, cert, ca, vendorToken] = await Promise.all([
    fsp.readFile(files.serverKey), fsp.readFile(files.serverCert), fsp.readFile(files.caCert), fsp.readFile(files.vendorToken, 'utf8'),
  ]);
  const vendor = Buffer.from(vendorToken.trim());
  const app = Fastify({
    https: { key, cert, ca, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
    loggerInstance: o.log,
    disableRequestLogging: true,
    bodyLimit: 5 << 20,
    keepAliveTimeout: 30_000,
  });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, b, done) => done(null, b));
  app.setErrorHandler((err: Error & { code?: string; statusCode?: number }, _req, reply) => {
    const code = err.code ?? '';
    const status = STATUS[code] ?? (err.statusCode && err.statusCode < 500 ? err.statusCode : 500);
    if (status >= 500) o.log.error({ err }, 'request failed');
    void reply.code(status).send({ error: { code: code.startsWith('HF_') ? code : status < 500 ? 'HF_INVALID_ARGUMENT' : 'HF_IO', message: err.message } });
  });

  const box = async (req: FastifyRequest) => {
    req.box = await o.fleet.authenticate(verifiedSerial(req));
  };
  const vendorOnly = async (req: FastifyRequest) => {
    const m = /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''));
    const given = Buffer.from(m?.[1] ?? '');
    if (given.length !== vendor.length || !timingSafeEqual(given, vendor)) {
      throw new HoldfastError('HF_UNAUTHENTICATED', 'the fleet API needs the vendor token (Authorization: Bearer, from DIR/vendor.token)');
    }
  };
  const params = (req: FastifyRequest) => req.params as Record<string, string>;

  // ---- boxes ----
  app.post('/v1/enroll', async (req) => o.fleet.enroll(req.body));
  app.post('/v1/heartbeat', { preHandler: box }, async (req) => o.fleet.heartbeat(req.box!, req.body));
  app.post('/v1/commands/:id/result', { preHandler: box }, async (req) => {
    await o.fleet.finishCommand(req.box!, Number(params(req).id), req.body);
    return { ok: true };
  });
  app.post('/v1/updates/report', { preHandler: box }, async (req) => o.fleet.reportUpdate(req.box!, req.body));
  app.post('/v1/renew', { preHandler: box }, async (req) => o.fleet.renew(req.box!, req.body));
  app.put('/v1/escrow', { preHandler: box }, async (req) => {
    if (!Buffer.isBuffer(req.body)) throw new HoldfastError('HF_INVALID_ARGUMENT', 'an escrow is sent as application/octet-stream');
    return o.fleet.putEscrow(req.box!, req.body);
  });
  app.get('/v1/escrow', { preHandler: box }, async (req, reply) => {
    const v = (req.query as { version?: string }).version;
    const e = await o.fleet.getEscrow(req.box!, v ? Number(v) : undefined);
    return reply.type('application/octet-stream').header('x-holdfast-escrow-version', String(e.version)).send(e.blob);
  });
  app.get('/v1/whoami', { preHandler: box }, async (req) => ({ name: req.box!.name, channel: req.box!.channel }));

  // ---- TUF: metadata and targets (boxes only) ----
  app.get('/tuf/metadata/*', { preHandler: box }, async (req, reply) => sendFile(files.tufMetadata, params(req)['*']!, req, reply));
  app.get('/tuf/targets/*', { preHandler: box }, async (req, reply) => sendFile(files.tufTargets, params(req)['*']!, req, reply));

  // ---- vendor ----
  app.get('/v1/fleet/boxes', { preHandler: vendorOnly }, async () => ({ boxes: await o.fleet.fleet() }));
  app.get('/v1/fleet/boxes/:name', { preHandler: vendorOnly }, async (req) => {
    const name = params(req).name!;
    const all = await o.fleet.fleet();
    const b = all.find((x) => x.name === name);
    if (!b) throw new HoldfastError('HF_NOT_FOUND', `no box named ${name}`);
    return { box: b, commands: await o.fleet.store.commands(name, 50), certificates: await o.fleet.store.certificates(name) };
  });
  app.post('/v1/fleet/boxes/:name/commands', { preHandler: vendorOnly }, async (req) => {
    const b = (req.body ?? {}) as { kind?: unknown; args?: unknown };
    return { id: await o.fleet.addCommand(params(req).name!, b.kind, b.args, 'vendor') };
  });
  app.post('/v1/fleet/boxes/:name/revoke', { preHandler: vendorOnly }, async (req) => o.fleet.revoke(params(req).name!));
  app.post('/v1/fleet/tokens', { preHandler: vendorOnly }, async (req) => {
    const b = (req.body ?? {}) as { hours?: number; replaces?: string; note?: string };
    return o.fleet.createToken({ ...(b.hours ? { hours: b.hours } : {}), replaces: b.replaces ?? null, note: b.note ?? '' });
  });
  app.get('/v1/fleet/releases', { preHandler: vendorOnly }, async () => {
    const out = [];
    for (const r of await o.fleet.store.releases()) {
      out.push({ ...r, offered: (await o.fleet.store.offers(r.channel, r.version)).length, reports: await o.fleet.store.updateReports(r.channel, r.version) });
    }
    return { releases: out };
  });
  app.post('/v1/fleet/releases/:channel/:version/rollout', { preHandler: vendorOnly }, async (req) => {
    const b = (req.body ?? {}) as { percent?: number; resume?: boolean };
    return { release: await o.fleet.setRollout(params(req).channel, params(req).version, Number(b.percent), b.resume === true) };
  });

  // ---- the fleet page (static; it calls the vendor API with the token typed in) ----
  const page = async (file: string, type: string, reply: FastifyReply) => reply
    .type(type)
    .header('content-security-policy', "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'")
    .header('x-content-type-options', 'nosniff')
    .send(await fsp.readFile(path.join(PUBLIC_DIR, file)));
  app.get('/', async (_req, reply) => reply.redirect('/fleet'));
  app.get('/fleet', async (_req, reply) => page('fleet.html', 'text/html; charset=utf-8', reply));
  app.get('/fleet/fleet.js', async (_req, reply) => page('fleet.js', 'text/javascript; charset=utf-8', reply));
  app.get('/fleet/fleet.css', async (_req, reply) => page('fleet.css', 'text/css; charset=utf-8', reply));

  await app.listen({ host: o.host, port: o.port });
  const port = (app.server.address() as { port: number }).port;
  const every = o.timestampRefreshMs ?? TIMESTAMP_REFRESH_MS;
  let ticks = 0;
  const refresh = async () => {
    try {
      // The snapshot (7 days) once a day, the timestamp (1 day) every tick.
      if (ticks++ % Math.max(1, Math.round(86_400_000 / (every || TIMESTAMP_REFRESH_MS))) === 0) await refreshSnapshot({ repoDir: files.tuf });
      else await refreshTimestamp({ repoDir: files.tuf });
    } catch (err) {
      o.log.error({ err }, 'could not re-sign the TUF snapshot/timestamp: boxes will refuse updates once they expire');
    }
  };
  await refresh();
  const timer = every > 0 ? setInterval(() => void refresh(), every) : null;
  timer?.unref();
  return {
    port, url: `https://${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`,
    close: async () => {
      if (timer) clearInterval(timer);
      await app.close();
    },
  };
}
