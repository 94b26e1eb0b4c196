import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';

import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';

import { errorCode } from '../errors/index.ts';
import { ensureSelfSignedServer } from '../pki/index.ts';
import { EngineClient } from './engine-client.ts';

export const SESSION_COOKIE = 'hf_session';
const PUBLIC_DIR = path.join(import.meta.dirname, 'public');
const STATIC: Record<string, string> = {
  '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/app.css': 'app.css', '/favicon.svg': 'favicon.svg',
};
const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml' };
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

export interface ConsoleOptions {
  /** Where the console keeps its TLS certificate (made on first start). */
  stateDir: string;
  engineSocket: string;
  host: string;
  port: number;
  log: Logger;
  /** Extra names for the certificate (besides localhost, 127.0.0.1, ::1 and this host's name). */
  certHosts?: string[];
}

function cookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out.set(part.slice(0, i).trim(), decodeURIComponent(part.slice(i + 1).trim()));
  }
  return out;
}

const sessionCookie = (token: string, maxAge: number) =>
  `${SESSION_COOKIE}=${token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=${maxAge}`;

/** Whether a request that changes something comes from this console's own pages. */
function sameOrigin(req: FastifyRequest): boolean {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return false;
  const origin = req.headers.origin;
  if (origin === undefined) return true; // not a browser's cross-site request (those carry Origin)
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

function fail(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply.code(status).header('content-type', 'application/json').send({ error: { code, message } });
}

/**
 * holdfast-console: the web console over HTTPS. It serves the single-page
 * app and relays /api/v1/* to the engine's API (/v1/*), turning the
 * session cookie (HttpOnly, Secure, SameSite=Strict; the browser never
 * sees the token otherwise) into the engine's Authorization header, and
 * refusing changes from other sites (Origin / Sec-Fetch-Site) before the
 * engine checks the CSRF token. Users, passwords, roles, lockout and the
 * audit log live in the engine; the console keeps nothing but its
 * certificate. /metrics relays the engine's Prometheus text to a scraper
 * holding the metrics token.
 */
export async function startConsole(o: ConsoleOptions): Promise<{ url: string; fingerprint: string; close(): Promise<void> }> {
  const certFile = path.join(o.stateDir, 'console.crt');
  const keyFile = path.join(o.stateDir, 'console.key');
  const hosts = ['localhost', '127.0.0.1', '::1', ...[os.hostname(), ...(o.certHosts ?? [])].filter((h) => DNS_NAME.test(h))];
  if (await ensureSelfSignedServer(certFile, keyFile, hosts)) o.log.info({ certFile, hosts }, 'made the console\'s TLS certificate');
  const engine = new EngineClient(o.engineSocket);
  const app = Fastify({
    logger: false, bodyLimit: 1 << 20,
    https: { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), minVersion: 'TLSv1.2' } as https.ServerOptions,
  });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, b, done) => done(null, b));

  app.addHook('onSend', async (_req, reply) => {
    reply.header('strict-transport-security', 'max-age=31536000');
    reply.header('x-content-type-options', 'nosniff');
    reply.header('x-frame-options', 'DENY');
    reply.header('referrer-policy', 'no-referrer');
    reply.header('content-security-policy', "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
  });

  for (const [url, file] of Object.entries(STATIC)) {
    app.get(url, async (_req, reply) => {
      const body = await fsp.readFile(path.join(PUBLIC_DIR, file));
      return reply.header('content-type', TYPES[path.extname(file)] ?? 'application/octet-stream').header('cache-control', 'no-cache').send(body);
    });
  }

  app.get('/metrics', async (req, reply) => {
    const [scheme, token] = (req.headers.authorization ?? '').split(' ', 2);
    if (scheme !== 'Bearer' || !token) return fail(reply, 401, 'HF_UNAUTHENTICATED', 'metrics need Authorization: Bearer <DATA_DIR/metrics.token>');
    const r = await engine.raw('GET', '/v1/metrics', { authorization: `Metrics ${token}` });
    return reply.code(r.statusCode).header('content-type', String(r.headers['content-type'] ?? 'text/plain')).send(await r.body.text());
  });

  app.all('/api/v1/*', async (req, reply) => {
    const sub = req.url.slice('/api'.length); // keeps /v1/… and the query
    const route = sub.split('?')[0]!;
    const token = cookies(req.headers.cookie).get(SESSION_COOKIE) ?? null;
    const changing = req.method !== 'GET' && req.method !== 'HEAD';
    if (changing && !sameOrigin(req)) return fail(reply, 403, 'HF_CSRF', 'a request from another site may not change anything here');
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `Bearer ${token}`;
    const csrf = req.headers['x-csrf-token'];
    if (typeof csrf === 'string') headers['x-csrf-token'] = csrf;
    const ct = req.headers['content-type'];
    if (typeof ct === 'string') headers['content-type'] = ct;
    let bodyIn = Buffer.isBuffer(req.body) ? req.body : undefined;
    if (route === '/v1/login' && bodyIn) {
      // the engine records where a login came from
      try {
        const b = JSON.parse(bodyIn.toString('utf8')) as Record<string, unknown>;
        bodyIn = Buffer.from(JSON.stringify({ ...b, from: req.ip }));
      } catch {
        // the engine answers a malformed body
      }
    }
    // The browser went away (closed the tab, cancelled a download): stop asking the engine.
    const abort = new AbortController();
    reply.raw.on('close', () => { if (!reply.raw.writableFinished) abort.abort(); });
    const r = await engine.raw(req.method as 'GET', sub, headers, changing ? bodyIn ?? null : null, abort.signal);
    reply.code(r.statusCode);
    for (const h of ['content-type', 'content-disposition', 'content-length', 'cache-control']) {
      const v = r.headers[h];
      if (typeof v === 'string') reply.header(h, v);
    }
    if (route === '/v1/login' && r.statusCode === 200) {
      const j = JSON.parse(await r.body.text()) as { token: string; user: string; role: string; csrf: string };
      reply.header('set-cookie', sessionCookie(j.token, 12 * 3600));
      reply.removeHeader('content-length');
      return reply.send({ user: j.user, role: j.role, csrf: j.csrf });
    }
    if (route === '/v1/logout' || (r.statusCode === 401 && token)) reply.header('set-cookie', sessionCookie('', 0));
    if (route === '/v1/events' && r.statusCode === 200) {
      reply.header('x-accel-buffering', 'no');
      return reply.send(Readable.from(r.body));
    }
    return reply.send(r.body);
  });

  app.setNotFoundHandler((_req, reply) => fail(reply, 404, 'HF_NOT_FOUND', 'no such page'));
  app.setErrorHandler((err, _req, reply) => {
    const code = errorCode(err);
    if (code === 'HF_ENGINE_UNAVAILABLE') return fail(reply, 503, code, (err as Error).message);
    o.log.error({ err }, 'console request failed');
    return fail(reply, 500, code && code.startsWith('HF_') ? code : 'HF_IO', (err as Error).message);
  });

  // Not app.listen: on 0.0.0.0 fastify lists every interface to log its
  // addresses (os.networkInterfaces, a netlink socket), which the unit's
  // RestrictAddressFamilies= rightly refuses.
  await app.ready();
  await new Promise<void>((resolve, reject) => {
    app.server.once('error', reject);
    app.server.listen({ host: o.host, port: o.port }, () => {
      app.server.off('error', reject);
      resolve();
    });
  });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : o.port;
  const url = `https://${o.host.includes(':') ? `[${o.host}]` : o.host}:${port}`;
  return {
    url,
    // what a browser shows for the self-signed certificate, to compare before trusting it
    fingerprint: `SHA256:${new X509Certificate(fs.readFileSync(certFile)).fingerprint256}`,
    close: async () => {
      const closed = app.server.listening ? new Promise((resolve) => app.server.close(resolve)) : Promise.resolve();
      app.server.closeAllConnections();
      await app.close();
      await closed;
      await engine.close();
    },
  };
}


