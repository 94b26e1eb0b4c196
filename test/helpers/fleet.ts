import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import { pino } from 'pino';
import type { Test } from 'tap';
import * as tar from 'tar';
import { Agent as HttpAgent, request } from 'undici';

import { Agent, type Provisioning, type ServiceManager, installRelease, readProvisioning, switchRelease } from '../../appliance/agent/index.ts';
import type { EngineClient } from '../../appliance/console/engine-client.ts';
import { channelFiles } from '../../update-channel/server/channel-files.ts';
import { ROOT } from './cli.ts';
import { tmpDir } from './tmp.ts';

const NODE = process.execPath;
const CHANNEL = path.join(ROOT, 'update-channel', 'cli', 'channel.ts');

/** Runs `npm run channel -- ARGS` (the pinned Node) and returns stdout; rejects with stderr on failure. */
export function channelCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(NODE, [CHANNEL, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    c.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    c.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

export interface Channel {
  dir: string;
  offlineKeys: string;
  url: string;
  port: number;
  pid: number;
  vendorToken: string;
  ca: string;
  cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** A provisioning file with a new token (optionally replacing a box). */
  provisioning(o?: { replaces?: string; hours?: number; fleetUrl?: string }): Promise<Provisioning>;
  /** Like provisioning(), through the vendor API (fast, for many boxes). */
  provisioningViaApi(): Promise<Provisioning>;
  /** The vendor's fleet API. */
  vendor<T = Record<string, unknown>>(method: 'GET' | 'POST', p: string, body?: unknown): Promise<{ status: number; body: T }>;
  publish(bundle: string, version: string, o?: { channel?: string; percent?: number }): Promise<void>;
}

/** A channel made with `init` (its certificate for `hosts`, default localhost and loopback) and run with `serve` as its own process on 127.0.0.1 (killed by pid at teardown). */
export async function startChannel(t: Test, o: { heartbeatSeconds?: number; extraArgs?: string[]; hosts?: string[] } = {}): Promise<Channel> {
  const base = tmpDir(t, 'hf-channel-');
  const dir = path.join(base, 'channel');
  const offlineKeys = path.join(base, 'offline-keys');
  const init = await channelCli(['init', '--dir', dir, '--offline-keys', offlineKeys, ...(o.hosts ? ['--host', o.hosts.join(',')] : [])]);
  if (init.code !== 0) throw new Error(`channel init failed: ${init.stderr}`);
  const child = spawn(NODE, [CHANNEL, 'serve', '--dir', dir, '--listen', '127.0.0.1:0', '--heartbeat-seconds', String(o.heartbeatSeconds ?? 300), ...(o.extraArgs ?? [])],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = fs.createWriteStream(path.join(base, 'channel.log'));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => { const k = setTimeout(() => { child.kill('SIGKILL'); r(null); }, 5000); child.once('exit', () => { clearTimeout(k); r(null); }); });
    }
  });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('the channel did not start within 20 s')), 20_000);
    child.stderr.on('data', (d: Buffer) => log.write(d));
    child.on('exit', (code) => reject(new Error(`the channel exited with ${code} before it was ready`)));
    child.stdout.on('data', (d: Buffer) => {
      log.write(d);
      buf += d.toString();
      const m = /"port":(\d+)[^\n]*"msg":"channel ready"/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  const files = channelFiles(dir);
  const ca = await fsp.readFile(files.caCert, 'utf8');
  const vendorToken = (await fsp.readFile(files.vendorToken, 'utf8')).trim();
  const url = `https://127.0.0.1:${port}`;
  const vendorAgent = new HttpAgent({ connect: { ca } });
  t.teardown(() => vendorAgent.close());
  let n = 0;
  const channel: Channel = {
    dir, offlineKeys, url, port, pid: child.pid!, vendorToken, ca,
    cli: (args) => channelCli(args),
    provisioning: async (p = {}) => {
      const file = path.join(base, `provisioning-${++n}.json`);
      const r = await channelCli(['token', '--dir', dir, '--provisioning', file, '--fleet-url', p.fleetUrl ?? url,
        ...(p.replaces ? ['--replaces', p.replaces] : []), ...(p.hours ? ['--hours', String(p.hours)] : [])]);
      if (r.code !== 0) throw new Error(`channel token failed: ${r.stderr}`);
      return readProvisioning(file);
    },
    provisioningViaApi: async () => {
      const tok = await channel.vendor<{ token: string }>('POST', '/v1/fleet/tokens', { hours: 1 });
      const tufRoot = JSON.parse(await fsp.readFile(path.join(files.tufMetadata, '1.root.json'), 'utf8')) as Record<string, unknown>;
      return { format: 'holdfast-provisioning', version: 1, fleet: url, token: tok.body.token, ca, tufRoot, channel: 'stable' };
    },
    vendor: async (method, p, body) => {
      const r = await request(`${url}${p}`, {
        method, dispatcher: vendorAgent, headers: { authorization: `Bearer ${vendorToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      return { status: r.statusCode, body: await r.body.json() as never };
    },
    publish: async (bundle, version, p = {}) => {
      const r = await channelCli(['publish', '--dir', dir, '--offline-keys', offlineKeys, '--channel', p.channel ?? 'stable', '--version', version,
        '--percent', String(p.percent ?? 100), bundle]);
      if (r.code !== 0) throw new Error(`channel publish failed: ${r.stderr}`);
      // The service reads the releases at most once a second (every heartbeat needs them).
      await new Promise((resolve) => setTimeout(resolve, 1100));
    },
  };
  return channel;
}

/**
 * A small release for tests that need many boxes: release.json, bin/node
 * (a wrapper starting the test's own Node, or for a broken release a
 * runtime that fails to start) and appliance/cli/holdfast.mjs, which runs
 * the checkout's CLI, so that the self-test is the real one. Full bundles
 * (update-channel/bundle) are what fleet-update.test.ts installs.
 */
export async function lightRelease(dir: string, version: string, o: { broken?: boolean } = {}): Promise<string> {
  const stage = path.join(dir, `stage-${version}`);
  await fsp.mkdir(path.join(stage, 'bin'), { recursive: true });
  await fsp.mkdir(path.join(stage, 'appliance', 'cli'), { recursive: true });
  await fsp.writeFile(path.join(stage, 'release.json'), JSON.stringify({ format: 'holdfast-release', formatVersion: 1, version, node: process.versions.node, built: 0 }));
  await fsp.writeFile(path.join(stage, 'bin', 'node'), o.broken
    ? '#!/bin/sh\necho "broken runtime: cannot start" >&2\nexit 70\n'
    : `#!/bin/sh\nexec ${JSON.stringify(NODE)} "$@"\n`, { mode: 0o755 });
  await fsp.writeFile(path.join(stage, 'appliance', 'cli', 'holdfast.mjs'), `import ${JSON.stringify(path.join(ROOT, 'appliance', 'cli', 'holdfast.mjs'))};\n`);
  const out = path.join(dir, `holdfast-${version}.tar.gz`);
  await tar.create({ file: out, cwd: stage, gzip: true, portable: true }, ['release.json', 'bin', 'appliance']);
  return out;
}

/** Services for a box without an engine: nothing to restart; the self-test is the health check. */
export class NoServices implements ServiceManager {
  agentRestarts = 0;
  async restart(): Promise<void> { /* no engine on this box */ }
  async restartAgent(): Promise<void> { this.agentRestarts++; }
}

/** An agent on its own install root with `bundle` installed as the current release. */
export async function startAgent(t: Test, o: {
  provisioning: Provisioning; bundle: string; version: string; engine?: EngineClient | null; services?: ServiceManager;
  healthTimeoutMs?: number; selfTestArgs?: string[]; dir?: string;
}): Promise<{ agent: Agent; root: string; dataDir: string }> {
  const dir = o.dir ?? tmpDir(t, 'hf-box-');
  const root = path.join(dir, 'opt');
  const dataDir = path.join(dir, 'agent');
  if (!fs.existsSync(path.join(root, 'current'))) {
    await installRelease(root, o.bundle, o.version);
    await switchRelease(root, o.version);
  }
  const agent = await Agent.open({
    dataDir, installRoot: root, provisioning: o.provisioning, engine: o.engine ?? null, services: o.services ?? new NoServices(),
    log: pino({ level: process.env.HOLDFAST_TEST_LOG ? 'info' : 'silent' }), healthTimeoutMs: o.healthTimeoutMs ?? 30_000, selfTestArgs: o.selfTestArgs ?? [],
  });
  t.teardown(() => agent.close());
  return { agent, root, dataDir };
}
