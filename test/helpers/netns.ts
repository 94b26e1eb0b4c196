// A throwaway customer LAN in two network namespaces, for tests that boot a
// VM from the network:
//
//   namespace LAN  (hf-lan-PID-N)                 namespace ROUTER (hf-rtr-PID-N)
//   ┌──────────────────────────────────────┐      ┌──────────────────────────────┐
//   │ br0 192.168.77.2/24 (boot server)    │      │ veth-rtr 192.168.77.1/24     │
//   │  ├─ tap0  (the VM's NIC, QEMU)       │      │ dnsmasq: the customer's DHCP │
//   │  └─ veth-lan ════════════════════════╪══════╪═ (.100–.150, router .1)     │
//   └──────────────────────────────────────┘      │ uplink: .1:PORT → unix sock ─┼─→ root ns 127.0.0.1:PORT
//                                                 └──────────────────────────────┘
//
// Nothing outside 127.0.0.0/8 is touched in the root namespace: every
// interface and address lives in the two namespaces, which are created here
// and deleted at teardown (which removes their interfaces with them). The
// uplink crosses into the root namespace through a unix socket, so the root
// side only ever connects to 127.0.0.1.
import { type ChildProcess, execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Test } from 'tap';

import type { BootRequest } from '../../provisioning/boot/boot-server.ts';
import { startLifeline } from './lifeline.ts';

export const LAN_NETWORK = '192.168.77.0/24';
export const ROUTER_ADDRESS = '192.168.77.1';
export const BOOT_SERVER_ADDRESS = '192.168.77.2';
export const DHCP_RANGE = ['192.168.77.100', '192.168.77.150'] as const;

export type LanSide = 'lan' | 'router';

export interface Lan {
  /** The namespace names. */
  ns: { lan: string; router: string };
  /** Address of br0 in LAN: where the boot server listens. */
  bootServerAddress: string;
  /** The router's address (ROUTER's end of the veth): DHCP server, default gateway, uplink. */
  routerAddress: string;
  /** Interfaces in LAN: the bridge (boot server's interface) and the VM's tap. */
  bridge: 'br0';
  tap: 'tap0';
  /** A private directory (logs, sockets, configs) removed at teardown unless HOLDFAST_KEEP_TMP=1. */
  dir: string;
  /** The customer DHCP server's (dnsmasq in ROUTER) log and lease file. */
  routerDhcp: { pid: number; log: string; leases: string };
  /**
   * Spawns `ip netns exec NS cmd args…` (ip execs the command, so the
   * child's pid is the command's); it is killed by pid at teardown.
   */
  exec(ns: LanSide, cmd: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /**
   * Makes TCP connections to ROUTER_ADDRESS:routerPort (from inside the LAN
   * or the VM) reach 127.0.0.1:hostPort in the root namespace.
   */
  uplink(routerPort: number, hostPort: number): Promise<void>;
  /** An HTTP request (GET unless told) from inside LAN: node's http client run in the namespace. */
  httpGetInLan(url: string, opts?: { method?: string; timeoutMs?: number }): Promise<{ status: number; body: string; headers: Record<string, string> }>;
  /** The SHA-256 fingerprint ("SHA256:AB:CD:…") of the TLS certificate served at host:port, seen from inside LAN. */
  tlsFingerprint(host: string, port: number, timeoutMs?: number): Promise<string>;
  /**
   * Runs the boot server (provisioning/boot/serve.ts) inside LAN on br0 at
   * bootServerAddress; resolves once it is ready. Killed at teardown.
   */
  startBootServer(o: { dir: string; stateDir: string; httpPort?: number; efiLoader?: 'ipxe.efi' | 'snponly.efi' }): Promise<LanBootServer>;
  /** The customer DHCP server's log so far. */
  routerDhcpLog(): string;
  /** What teardown does; idempotent. */
  destroy(): Promise<void>;
}

/** The boot server as a process in the LAN namespace (see Lan.startBootServer). */
export interface LanBootServer {
  /** serve.ts's pid (dnsmasq is its child, pids[0] of its ready line). */
  pid: number;
  dnsmasqPid: number;
  httpUrl: string;
  dnsmasqConf: string;
  dnsmasqLog: string;
  /** The HTTP requests it logged so far, in order. */
  requests: BootRequest[];
  /** Every JSON line it printed. */
  lines: Record<string, unknown>[];
  /** dnsmasq's log so far. */
  dnsmasqLogText(): string;
  /**
   * Resolves with the first request for `path` (already made or to come)
   * that `filter` accepts (default: any that did not come from the boot
   * server's own address, i.e. not a check made with httpGetInLan); rejects
   * after timeoutMs, or if the server exits.
   */
  waitForRequest(path: string, timeoutMs: number, step: string, filter?: (r: BootRequest) => boolean): Promise<BootRequest>;
  /** SIGTERM (dnsmasq stopped, HTTP closed), SIGKILL after 5 s. */
  stop(): Promise<void>;
}

const NODE = process.execPath;
const SERVE = path.join(import.meta.dirname, '..', '..', 'provisioning', 'boot', 'serve.ts');
const UPLINK_FORWARD = path.join(import.meta.dirname, 'uplink-forward.ts');
let counter = 0;

function ip(...args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string };
    throw new Error(`ip ${args.join(' ')} failed: ${e.stderr?.trim() ?? String(err)}`);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function netnsPids(name: string): number[] {
  try {
    return execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n').filter((l) => /^\d+$/.test(l.trim())).map(Number);
  } catch {
    return [];
  }
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch { /* already gone */ }
}

/** Kills whatever still runs in namespace `name` (by pid) and deletes it. */
function deleteNamespace(name: string): void {
  for (let i = 0; i < 20; i++) {
    const pids = netnsPids(name);
    if (pids.length === 0) break;
    for (const p of pids) killPid(p, 'SIGKILL');
    execFileSync('sleep', ['0.05']);
  }
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch { /* already gone */ }
}

/** Deletes namespaces `PREFIX-lan-PID-N` / `PREFIX-rtr-PID-N` left by a test process that no longer exists. */
function deleteStale(prefix: string): void {
  const list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  const re = new RegExp(`^(${prefix.replace(/[^a-zA-Z0-9_]/g, '\\$&')}-(?:lan|rtr)-(\\d+)-\\d+)\\b`);
  for (const line of list.split('\n')) {
    const m = re.exec(line.trim());
    if (m && Number(m[2]) !== process.pid && !alive(Number(m[2]))) deleteNamespace(m[1]!);
  }
}

/**
 * The watcher that deletes the namespaces (and kills what runs in them) if
 * this process dies without running teardown (a SIGKILL, a crash): it blocks
 * reading a FIFO whose only writer is this process; the kernel closes that
 * end however the process dies; it also removes the LAN's directory.
 * cut() ends it without doing anything.
 */
function netnsLifeline(dir: string, names: string[]): { cut(): void } {
  return startLifeline(dir, 'netns-lifeline', [
    'read _ || :',
    'for ns in "$@"; do',
    '  for i in 1 2 3 4 5; do pids=$(ip netns pids "$ns" 2>/dev/null); [ -n "$pids" ] || break; kill -KILL $pids 2>/dev/null; sleep 0.1; done',
    '  ip netns del "$ns" 2>/dev/null',
    'done',
    '[ -n "$KEEP" ] || rm -rf -- "$DIR"',
  ], names, { ...process.env, DIR: dir, KEEP: process.env.HOLDFAST_KEEP_TMP ?? '' });
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** Waits for a JSON line with `msg` on a child's stdout; rejects if it exits first or after timeoutMs. */
export function waitForJsonLine(child: ChildProcess, msg: string, timeoutMs: number, what: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let seen = '';
    const done = (fn: () => void) => {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
      fn();
    };
    const onData = (d: Buffer) => {
      buf += d.toString('utf8');
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const line of lines) {
        seen = (seen + line + '\n').slice(-4000);
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          if (j.msg === msg) return done(() => resolve(j));
        } catch { /* not JSON */ }
      }
    };
    const onExit = (code: number | null, signal: string | null) => done(() => reject(new Error(`${what} exited (${code ?? signal}) before "${msg}":\n${seen}${buf}`)));
    const timer = setTimeout(() => done(() => reject(new Error(`${what}: no "${msg}" within ${timeoutMs / 1000} s:\n${seen}${buf}`))), timeoutMs);
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Creates the LAN and ROUTER namespaces, their links and the customer DHCP server; all removed at teardown. */
export async function createLan(t: Test, o: { prefix?: string } = {}): Promise<Lan> {
  const prefix = o.prefix ?? 'hf';
  deleteStale(prefix);
  const n = counter++;
  const ns = { lan: `${prefix}-lan-${process.pid}-${n}`, router: `${prefix}-rtr-${process.pid}-${n}` };
  const dir = fs.mkdtempSync(path.join(process.env.HOLDFAST_TEST_TMP ?? os.tmpdir(), 'hf-lan-'));
  // dnsmasq runs as "nobody" once started: it must reach its files here
  fs.chmodSync(dir, 0o711);

  const children = new Set<ChildProcess>();
  const servers: net.Server[] = [];
  const sockets = new Set<net.Socket>();
  let lifeline: { cut(): void } | undefined;
  let destroyed: Promise<void> | undefined;
  const destroy = () => {
    destroyed ??= (async () => {
      // our own children first, politely, then whatever is left in the namespaces
      const running = [...children].filter((c) => c.exitCode === null && c.signalCode === null && c.pid);
      for (const c of running) killPid(c.pid!, 'SIGTERM');
      const deadline = Date.now() + 5000;
      while (running.some((c) => c.exitCode === null && c.signalCode === null) && Date.now() < deadline) await sleep(50);
      for (const c of running) if (c.exitCode === null && c.signalCode === null) killPid(c.pid!, 'SIGKILL');
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      deleteNamespace(ns.lan);
      deleteNamespace(ns.router);
      lifeline?.cut();
      if (!process.env.HOLDFAST_KEEP_TMP) fs.rmSync(dir, { recursive: true, force: true });
    })();
    return destroyed;
  };
  t.teardown(destroy);

  try {
    ip('netns', 'add', ns.lan);
    ip('netns', 'add', ns.router);
    lifeline = netnsLifeline(dir, [ns.lan, ns.router]);
    for (const name of [ns.lan, ns.router]) ip('-n', name, 'link', 'set', 'lo', 'up');
    // LAN: the bridge, the router's veth and the VM's tap on it
    ip('-n', ns.lan, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
    ip('-n', ns.lan, 'link', 'add', 'veth-lan', 'type', 'veth', 'peer', 'name', 'veth-rtr', 'netns', ns.router);
    ip('-n', ns.lan, 'link', 'set', 'veth-lan', 'master', 'br0');
    ip('-n', ns.lan, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap');
    ip('-n', ns.lan, 'link', 'set', 'tap0', 'master', 'br0');
    ip('-n', ns.lan, 'addr', 'add', `${BOOT_SERVER_ADDRESS}/24`, 'dev', 'br0');
    for (const dev of ['veth-lan', 'tap0', 'br0']) ip('-n', ns.lan, 'link', 'set', dev, 'up');
    ip('-n', ns.router, 'addr', 'add', `${ROUTER_ADDRESS}/24`, 'dev', 'veth-rtr');
    ip('-n', ns.router, 'link', 'set', 'veth-rtr', 'up');
  } catch (err) {
    await destroy();
    throw err;
  }

  const exec = (side: LanSide, cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess => {
    const child = spawn('ip', ['netns', 'exec', ns[side], cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    children.add(child);
    // a child nobody reads must not block on a full pipe
    child.stdout?.on('data', () => {});
    child.stderr?.on('data', () => {});
    child.once('error', () => {});
    return child;
  };

  // the customer's own DHCP server: addresses and a router, nothing about PXE
  const routerLog = path.join(dir, 'router-dnsmasq.log');
  const routerLeases = path.join(dir, 'router-dnsmasq.leases');
  const routerConf = path.join(dir, 'router-dnsmasq.conf');
  fs.writeFileSync(routerConf, [
    '# the customer\'s DHCP server (test LAN): addresses only, no DNS, no PXE',
    'port=0',
    'interface=veth-rtr',
    'bind-interfaces',
    `dhcp-range=${DHCP_RANGE[0]},${DHCP_RANGE[1]},255.255.255.0,1h`,
    `dhcp-option=option:router,${ROUTER_ADDRESS}`,
    'dhcp-authoritative',
    'log-dhcp',
    `log-facility=${routerLog}`,
    `dhcp-leasefile=${routerLeases}`,
    `pid-file=${path.join(dir, 'router-dnsmasq.pid')}`,
    '',
  ].join('\n'));
  const dhcp = exec('router', 'dnsmasq', ['--keep-in-foreground', `--conf-file=${routerConf}`]);
  let dhcpStderr = '';
  dhcp.stderr!.on('data', (d: Buffer) => { dhcpStderr += d.toString('utf8'); });
  const deadline = Date.now() + 10_000;
  while (!/dnsmasq\[\d+\]: started, version/.test(readText(routerLog))) {
    if (dhcp.exitCode !== null || dhcp.signalCode !== null || Date.now() > deadline) {
      const why = `customer DHCP server (dnsmasq in ${ns.router}) did not start: ${dhcpStderr.trim()}\n${readText(routerLog).slice(-3000)}`;
      await destroy();
      throw new Error(why);
    }
    await sleep(50);
  }

  const uplink = async (routerPort: number, hostPort: number): Promise<void> => {
    const sock = path.join(dir, `uplink-${routerPort}.sock`);
    const server = net.createServer((c) => {
      const up = net.connect(hostPort, '127.0.0.1');
      sockets.add(c);
      sockets.add(up);
      c.pipe(up);
      up.pipe(c);
      const end = () => { c.destroy(); up.destroy(); sockets.delete(c); sockets.delete(up); };
      c.on('error', end);
      up.on('error', end);
      c.on('close', end);
      up.on('close', end);
    });
    servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sock, () => resolve());
    });
    fs.chmodSync(sock, 0o600);
    const fwd = exec('router', NODE, [UPLINK_FORWARD, ROUTER_ADDRESS, String(routerPort), sock]);
    await waitForJsonLine(fwd, 'uplink ready', 10_000, `uplink forwarder ${ROUTER_ADDRESS}:${routerPort}`);
  };

  /** Runs a small CommonJS script with node inside LAN; resolves with its last stdout line as JSON. */
  const nodeInLan = async (script: string, args: string[], what: string): Promise<Record<string, unknown>> => {
    const child = exec('lan', NODE, ['-e', script, ...args]);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
    const line = out.trim().split('\n').pop() ?? '';
    let j: Record<string, unknown> = {};
    try {
      j = JSON.parse(line) as Record<string, unknown>;
    } catch { /* below */ }
    if (j.msg !== 'ok') throw new Error(`${what} in ${ns.lan} failed (exit ${code}): ${String(j.error ?? out)}`);
    return j;
  };

  const httpGetInLan = async (url: string, opts: { method?: string; timeoutMs?: number } = {}) => {
    const script = `
      const http = require('node:http');
      const [url, method, timeout] = process.argv.slice(1);
      const req = http.request(url, { method, timeout: Number(timeout) }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => process.stdout.write(JSON.stringify({ msg: 'ok', status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }) + '\\n'));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => { process.stdout.write(JSON.stringify({ msg: 'error', error: String(e) }) + '\\n'); process.exitCode = 1; });
      req.end();`;
    const j = await nodeInLan(script, [url, opts.method ?? 'GET', String(opts.timeoutMs ?? 10_000)], `${opts.method ?? 'GET'} ${url}`);
    return { status: j.status as number, body: (j.body as string) ?? '', headers: (j.headers as Record<string, string>) ?? {} };
  };

  const tlsFingerprint = async (host: string, port: number, timeoutMs = 10_000): Promise<string> => {
    const script = `
      const tls = require('node:tls');
      const [host, port, timeout] = process.argv.slice(1);
      const s = tls.connect({ host, port: Number(port), rejectUnauthorized: false, servername: undefined }, () => {
        const c = s.getPeerCertificate();
        process.stdout.write(JSON.stringify(c && c.fingerprint256 ? { msg: 'ok', fingerprint: 'SHA256:' + c.fingerprint256 } : { msg: 'error', error: 'no certificate' }) + '\\n');
        s.end();
      });
      s.setTimeout(Number(timeout), () => s.destroy(new Error('timeout')));
      s.on('error', (e) => { process.stdout.write(JSON.stringify({ msg: 'error', error: String(e) }) + '\\n'); process.exitCode = 1; });`;
    const j = await nodeInLan(script, [host, String(port), String(timeoutMs)], `TLS to ${host}:${port}`);
    return j.fingerprint as string;
  };

  const startBootServer = async (bo: { dir: string; stateDir: string; httpPort?: number; efiLoader?: 'ipxe.efi' | 'snponly.efi' }): Promise<LanBootServer> => {
    const args = [SERVE, '--dir', bo.dir, '--address', BOOT_SERVER_ADDRESS, '--interface', 'br0', '--http-port', String(bo.httpPort ?? 8080), '--state-dir', bo.stateDir];
    if (bo.efiLoader) args.push('--efi-loader', bo.efiLoader);
    const child = exec('lan', NODE, args);
    const requests: BootRequest[] = [];
    const lines: Record<string, unknown>[] = [];
    const waiters = new Set<() => void>();
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString('utf8')).slice(-4000); });
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      const parts = buf.split('\n');
      buf = parts.pop() ?? '';
      for (const line of parts) {
        let j: Record<string, unknown>;
        try {
          j = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        lines.push(j);
        if (j.msg === 'http request') requests.push({ method: String(j.method), path: String(j.path), status: Number(j.status), bytes: Number(j.bytes), remote: String(j.remote) });
      }
      for (const w of waiters) w();
    });
    let exited = false;
    child.once('exit', () => { exited = true; for (const w of waiters) w(); });
    const ready = await waitForJsonLine(child, 'boot server ready', 20_000, 'the boot server (serve.ts)');
    const dnsmasqLog = String(ready.dnsmasqLog);
    const notOurs = (r: BootRequest) => r.remote !== BOOT_SERVER_ADDRESS;
    const waitForRequest = (p: string, timeoutMs: number, step: string, filter: (r: BootRequest) => boolean = notOurs) => new Promise<BootRequest>((resolve, reject) => {
      const check = () => {
        const r = requests.find((x) => x.path === p && filter(x));
        if (r) { done(); resolve(r); } else if (exited) { done(); reject(new Error(`step "${step}" did not happen: the boot server exited; ${stderr.trim()}`)); }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`step "${step}" did not happen within ${Math.round(timeoutMs / 1000)} s: no request for ${p}; requests so far: ${requests.map((r) => `${r.remote} ${r.path} ${r.status}`).join(', ') || 'none'}`));
      }, timeoutMs);
      const done = () => { clearTimeout(timer); waiters.delete(check); };
      waiters.add(check);
      check();
    });
    const stop = async () => {
      if (exited) return;
      killPid(child.pid!, 'SIGTERM');
      const deadline = Date.now() + 5000;
      while (!exited && Date.now() < deadline) await sleep(50);
      if (!exited) killPid(child.pid!, 'SIGKILL');
    };
    return {
      pid: child.pid!,
      dnsmasqPid: (ready.pids as number[])[0]!,
      httpUrl: String(ready.url),
      dnsmasqConf: String(ready.conf),
      dnsmasqLog,
      requests,
      lines,
      dnsmasqLogText: () => readText(dnsmasqLog),
      waitForRequest,
      stop,
    };
  };

  return {
    ns,
    bootServerAddress: BOOT_SERVER_ADDRESS,
    routerAddress: ROUTER_ADDRESS,
    bridge: 'br0',
    tap: 'tap0',
    dir,
    routerDhcp: { pid: dhcp.pid!, log: routerLog, leases: routerLeases },
    exec,
    uplink,
    httpGetInLan,
    tlsFingerprint,
    startBootServer,
    routerDhcpLog: () => readText(routerLog),
    destroy,
  };
}
