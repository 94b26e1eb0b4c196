import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Test } from 'tap';

import { startLifeline } from './lifeline.ts';
import { tmpDir } from './tmp.ts';

/** A private OpenSSH server on loopback, for one test. */
export interface Sshd {
  host: '127.0.0.1';
  port: number;
  /** The login user. */
  user: string;
  /** The user's private key (ed25519, no passphrase). */
  identityFile: string;
  /** A known_hosts file with the server's key as "[127.0.0.1]:PORT ssh-ed25519 …". */
  knownHostsFile: string;
  /** The host key's fingerprint as `ssh-keygen -lf` prints it. */
  hostKeyFingerprint: string;
  /** The listener's pid. */
  pid: number;
  /** Its directory (keys, config, log). */
  dir: string;
  /** Kills the per-connection processes and the listener; idempotent. */
  stop(): Promise<void>;
}

export interface SshdOptions {
  /** Login user (default root); created with `useradd -M` if missing (see ensureUser). */
  user?: string;
}

const SSHD = '/usr/sbin/sshd';

/**
 * Starts /usr/sbin/sshd on a free loopback port with its own ed25519 host
 * key and a fresh user key pair, waits until it accepts connections, and
 * kills it by pid when the test ends (or the process exits).
 *
 * If the test process is killed by a signal (even SIGKILL), no exit hook
 * runs: a lifeline does the job then. A watcher shell, in a session of its
 * own (so a signal to our process group spares it), blocks reading a FIFO
 * whose only writer is this process; the kernel closes that end however
 * this process dies, the read returns, and the watcher SIGKILLs the
 * listener (when its command line, which sshd rewrites to "sshd: … -f
 * CONFIG … [listener]", still names this server's config, so a reused pid
 * is left alone) and its children. Connection processes whose
 * client was this test process see their sockets close and exit on their
 * own. stop() ends the watcher first, then the server.
 */
export async function startSshd(t: Test, opts: SshdOptions = {}): Promise<Sshd> {
  const user = opts.user ?? 'root';
  if (user !== 'root') ensureUser(user);
  const dir = tmpDir(t, 'hf-sshd-');
  // a non-root user's sshd reads authorized_keys as that user
  fs.chmodSync(dir, 0o755);
  const keygen = (file: string, comment: string) =>
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file], { stdio: 'pipe' });
  const hostKey = path.join(dir, 'host_ed25519');
  const identityFile = path.join(dir, 'id_ed25519');
  keygen(hostKey, 'holdfast-test-host');
  keygen(identityFile, 'holdfast-test-user');
  const authorizedKeys = path.join(dir, 'authorized_keys');
  fs.copyFileSync(`${identityFile}.pub`, authorizedKeys);
  fs.chmodSync(authorizedKeys, 0o644);
  const hostKeyFingerprint = execFileSync('ssh-keygen', ['-lf', `${hostKey}.pub`], { encoding: 'utf8' }).split(' ')[1]!;

  const port = await freePort();
  const config = path.join(dir, 'sshd_config');
  fs.writeFileSync(config, [
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${hostKey}`,
    `AuthorizedKeysFile ${authorizedKeys}`,
    `PidFile ${path.join(dir, 'sshd.pid')}`,
    'Subsystem sftp internal-sftp',
    'StrictModes no',
    'UsePAM no',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'PermitRootLogin prohibit-password',
    'MaxStartups 100',
    'MaxSessions 100',
    'PrintMotd no',
    'LogLevel VERBOSE',
    '',
  ].join('\n'));
  const knownHostsFile = path.join(dir, 'known_hosts');
  const [type, blob] = fs.readFileSync(`${hostKey}.pub`, 'utf8').split(' ');
  fs.writeFileSync(knownHostsFile, `[127.0.0.1]:${port} ${type} ${blob}\n`);

  fs.mkdirSync('/run/sshd', { recursive: true });
  const log = path.join(dir, 'sshd.log');
  const child = spawn(SSHD, ['-D', '-f', config, '-E', log], { stdio: 'ignore' });
  const pid = child.pid!;
  let exited = false;
  const exitedP = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  const lifeline = sshdLifeline(dir, pid, config);
  const onExit = () => killTree(pid, 'SIGKILL');
  process.on('exit', onExit);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    process.off('exit', onExit);
    lifeline.cut();
    killTree(pid, 'SIGTERM');
    await Promise.race([exitedP, sleep(5000)]);
    if (!exited) killTree(pid, 'SIGKILL');
  };
  t.teardown(stop);

  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`sshd exited at start:\n${readLog(log)}`);
    if (await accepts(port)) break;
    if (Date.now() > deadline) throw new Error(`sshd did not listen on port ${port} within 10 s:\n${readLog(log)}`);
    await sleep(50);
  }
  return { host: '127.0.0.1', port, user, identityFile, knownHostsFile, hostKeyFingerprint, pid, dir, stop };
}

/**
 * The watcher that kills sshd `pid` when this process dies without running
 * its exit hooks (see startSshd). cut() ends the watcher without killing
 * anything (the caller stops the server itself).
 */
function sshdLifeline(dir: string, pid: number, config: string): { cut(): void } {
  return startLifeline(dir, 'sshd-lifeline', [
    'read _ || :', // returns at EOF: every writer (this test process) is gone
    'tr "\\0" "\\n" < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2" || exit 0',
    'pkill -KILL -P "$1"',
    'kill -KILL "$1"',
  ], [String(pid), config]);
}

/**
 * Drops every client connection of the server, as a pulled network cable
 * would (the kernel closes the sockets): kills all descendants of the
 * listener, not the listener, which goes on accepting. Returns how many
 * processes it killed.
 */
export function dropConnections(sshd: Pick<Sshd, 'pid'>): number {
  const victims = descendants(sshd.pid);
  for (const p of victims) {
    try {
      process.kill(p, 'SIGKILL');
    } catch { /* already gone */ }
  }
  return victims.length;
}

/** Creates a login account for tests (no home, shell /bin/sh, password "*": not locked, unusable). Idempotent. */
export function ensureUser(name: string): void {
  try {
    execFileSync('id', ['-u', name], { stdio: 'ignore' });
    return;
  } catch { /* create it */ }
  execFileSync('useradd', ['-M', '-s', '/bin/sh', '-p', '*', name], { stdio: 'pipe' });
}

/** Kills the listener's descendants, then the listener. */
function killTree(pid: number, signal: NodeJS.Signals): void {
  for (const p of [...descendants(pid), pid]) {
    try {
      process.kill(p, signal);
    } catch { /* already gone */ }
  }
}

/** All processes below pid, from /proc (children before grandchildren). */
function descendants(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'latin1');
    } catch {
      continue;
    }
    // "pid (comm) state ppid …": comm may hold spaces and parentheses
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = parents.get(ppid) ?? [];
    list.push(Number(name));
    parents.set(ppid, list);
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const c of parents.get(queue.shift()!) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

function readLog(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-4000);
  } catch {
    return '(no log)';
  }
}
