// A real, private Samba smbd for tap tests: its own smb.conf, directories,
// password database, logs and loopback port under a tmpDir; no system service,
// and nothing of /etc/samba/smb.conf, /var/lib/samba, /run/samba,
// /var/cache/samba or /var/log/samba (every compiled-in path of `smbd -b` is
// overridden; smbclient gets a private client config too).
//
// Share access runs as a real Unix user (SAMBA_USER, created once with
// useradd -M), never `force user = root`: so a file the test chmods to 000
// (as root, on disk) answers NT_STATUS_ACCESS_DENIED over SMB, as on a real
// server. Files the test writes as root with the usual umask (0644/0755) are
// readable by that user; the share root itself belongs to that user, so
// writes over SMB work at its top level. The tmp base is made 0755 and every
// ancestor must be world-traversable (os.tmpdir() /tmp is; else set
// HOLDFAST_TEST_TMP=/var/tmp).
//
// Process model: smbd runs in the foreground (-F) as our child, in its own
// session and process group (spawn detached), so its pid is known at once (it
// equals the pid file in the private pid directory) and an early exit (bad
// config, port taken) is seen at once. smbd forks smbd-notifyd, cleanupd and
// one `smbd` per client connection; on the first RPC use (e.g. a share
// listing) it also starts samba-dcerpcd with rpcd_* workers, which call
// setsid() and leave our process group. stop() signals every live process
// that carries this server's smb.conf on its command line (SIGTERM, SIGKILL
// after a grace period) and waits until /proc shows none. If the test process
// dies: a process-exit hook SIGKILLs them (exit, uncaught exception); on
// SIGTERM/SIGKILL the smbd side exits on EOF of its stdin lifeline FIFO, and
// samba-dcerpcd follows on its own idle timeout (within about a minute).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import type { Test } from 'tap';

import { tmpDir } from './tmp.ts';

/**
 * 'default': Samba's defaults; 'signing': signing mandatory, SMB3_11 only;
 * 'encrypt': encryption required; 'strict': both ('signing' + 'encrypt');
 * 'shadow': defaults plus shadow_copy2 previous versions (makeShadowSnapshot).
 */
export type SambaProfile = 'default' | 'signing' | 'encrypt' | 'strict' | 'shadow';

/**
 * How the shares present names that are illegal on Windows (control
 * characters such as newline and tab, and `" * : < > ? \ |`). Names legal in
 * SMB (any Unicode, NFC or NFD, emoji, 255 bytes, trailing dot or space) are
 * sent verbatim in every mode; names that are not valid UTF-8 are left out of
 * listings in every mode (smbd logs "Conversion error: illegal character").
 * - 'verbatim' (default): `mangled names = no`. Such names are listed as they
 *   are but cannot be opened (NT_STATUS_OBJECT_NAME_INVALID); a `\` in a name
 *   makes smbclient abort the listing of that directory
 *   (NT_STATUS_INVALID_NETWORK_RESPONSE, "is_bad_finfo_name").
 * - 'mangle': Samba's own default (`mangled names = illegal`): they appear as
 *   8.3 names such as `TGUB0O~D` and can be read under that name.
 * - 'sfm': `vfs objects = catia` with the map macOS and vfs_fruit use:
 *   0x01-0x1f → U+F001-U+F01F, `" * : < > ? \ |` → U+F020-U+F027. Every
 *   such name is listed and readable, and the mapping is reversible.
 */
export type SambaNames = 'verbatim' | 'mangle' | 'sfm';

/** The catia map of vfs_fruit / macOS (Samba source3/lib/string_replace.c). */
export const SFM_CATIA_MAPPINGS = [
  ...Array.from({ length: 31 }, (_, i) => `0x${(i + 1).toString(16).padStart(2, '0')}:0x${(0xf001 + i).toString(16)}`),
  '0x22:0xf020', '0x2a:0xf021', '0x3a:0xf022', '0x3c:0xf023', '0x3e:0xf024', '0x3f:0xf025', '0x5c:0xf026', '0x7c:0xf027',
].join(',');

/** A name on disk as a 'sfm' share shows it (the inverse of what catia does on the way in). */
export function sfmName(name: string): string {
  const map: Record<string, number> = { '"': 0xf020, '*': 0xf021, ':': 0xf022, '<': 0xf023, '>': 0xf024, '?': 0xf025, '\\': 0xf026, '|': 0xf027 };
  return [...name].map((c) => {
    const cp = c.codePointAt(0)!;
    if (cp >= 1 && cp <= 0x1f) return String.fromCodePoint(0xf000 + cp);
    return map[c] !== undefined ? String.fromCodePoint(map[c]) : c;
  }).join('');
}

export interface SambaServer {
  host: '127.0.0.1';
  port: number;
  user: string;
  password: string;
  /** The workgroup; this standalone server accepts any domain name with the right password. */
  domain: string;
  /** The share name of `root`. */
  share: string;
  /** The shared directory on disk. */
  root: string;
  /** The listening smbd (also its process group id). */
  pid: number;
  profile: SambaProfile;
  logFile: string;
  /** Stops every process of this server; idempotent; also run by t.teardown. */
  stop(): Promise<void>;
}

/** The Unix (and Samba) user the share is accessed as. */
export const SAMBA_USER = 'hfsmbtest';
/** The share name of SambaServer.root. */
export const SAMBA_SHARE = 'data';
const WORKGROUP = 'HOLDFAST';
const START_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 3_000;

/** What the helpers need beyond the public fields. */
interface Internals {
  base: string;
  conf: string;
  clientConf: string;
  authFile: string;
  snapDir: string;
  child: ChildProcess;
  exited: Promise<void>;
  /** Write end of smbd's stdin FIFO; closing it makes smbd exit. */
  lifeline: number;
}
const internals = new WeakMap<SambaServer, Internals>();
const running = new Set<SambaServer>();

function inside(server: SambaServer): Internals {
  const i = internals.get(server);
  if (!i) throw new Error('not a server made by startSamba()');
  return i;
}

// --- smb.conf -------------------------------------------------------------

/** Per-profile share/global lines on top of the private base configuration. */
function profileLines(profile: SambaProfile, snapDir: string, root: string): { global: string[]; share: string[] } {
  switch (profile) {
    case 'default':
      return { global: [], share: [] };
    case 'signing':
      return { global: ['server signing = mandatory', 'server min protocol = SMB3_11'], share: [] };
    case 'encrypt':
      // 4.17 spells it `server smb encrypt`; `smb encrypt` is still accepted as a synonym.
      return { global: ['server smb encrypt = required'], share: [] };
    case 'strict':
      return { global: ['server signing = mandatory', 'server min protocol = SMB3_11', 'server smb encrypt = required'], share: [] };
    case 'shadow':
      return {
        global: [],
        share: [
          'vfs objects = shadow_copy2', // (catia goes in front of it for names: 'sfm')
          // The share root stands in for the file system's mount point, and the
          // snapshots live outside the share (so they never appear in listings):
          // <snapDir>/@GMT-YYYY.MM.DD-HH.MM.SS/<path relative to root>.
          `shadow:mountpoint = ${root}`,
          `shadow:snapdir = ${snapDir}`,
          'shadow:format = @GMT-%Y.%m.%d-%H.%M.%S',
          'shadow:sort = desc',
          'shadow:localtime = no',
        ],
      };
  }
}

function shareSection(name: string, dir: string, names: SambaNames, extra: string[]): string[] {
  const vfs = extra.find((l) => l.startsWith('vfs objects ='))?.slice('vfs objects ='.length).trim();
  const lines = [
    '',
    `[${name}]`,
    `  path = ${dir}`,
    '  read only = no',
    `  valid users = ${SAMBA_USER}`,
  ];
  if (names === 'verbatim') lines.push('  mangled names = no');
  if (names === 'mangle') lines.push('  mangled names = illegal');
  if (names === 'sfm') lines.push(`  vfs objects = catia${vfs ? ` ${vfs}` : ''}`, `  catia:mappings = ${SFM_CATIA_MAPPINGS}`);
  else if (vfs) lines.push(`  vfs objects = ${vfs}`);
  lines.push(...extra.filter((l) => !l.startsWith('vfs objects =')).map((l) => `  ${l}`));
  return lines;
}

function serverConf(d: Record<'private' | 'lock' | 'state' | 'cache' | 'pid' | 'log', string>, port: number,
  profile: SambaProfile, names: SambaNames, shares: Record<string, string>, snapDir: string): string {
  const p = profileLines(profile, snapDir, shares[SAMBA_SHARE]!);
  const lines = [
    '# written by test/helpers/samba.ts',
    '[global]',
    `  workgroup = ${WORKGROUP}`,
    '  netbios name = HFTEST',
    '  server role = standalone server',
    '  server string = holdfast test',
    `  smb ports = ${port}`,
    '  interfaces = 127.0.0.1',
    '  bind interfaces only = yes',
    '  disable netbios = yes',
    '  disable spoolss = yes',
    '  load printers = no',
    '  printing = bsd',
    '  printcap name = /dev/null',
    // every compiled-in path (smbd -b) that smbd, smbpasswd or samba-dcerpcd touch
    `  private dir = ${d.private}`,
    `  binddns dir = ${path.join(d.private, 'bind-dns')}`,
    `  lock directory = ${d.lock}`,
    `  state directory = ${d.state}`,
    `  cache directory = ${d.cache}`,
    `  pid directory = ${d.pid}`,
    `  ncalrpc dir = ${path.join(d.lock, 'ncalrpc')}`,
    `  ntp signd socket directory = ${path.join(d.lock, 'ntp_signd')}`,
    `  winbindd socket directory = ${path.join(d.lock, 'winbindd')}`,
    `  usershare path = ${path.join(d.state, 'usershares')}`,
    `  passdb backend = tdbsam:${path.join(d.private, 'passdb.tdb')}`,
    `  smb passwd file = ${path.join(d.private, 'smbpasswd')}`,
    `  log file = ${path.join(d.log, 'log.smbd')}`, // smbd -l <log dir> writes here too; samba-dcerpcd and rpcd_* write log.<name> beside it
    '  logging = file',
    '  log level = 1',
    '  max log size = 0',
    '  panic action =',
    '  registry shares = no',
    '  include system krb5 conf = no',
    ...p.global.map((l) => `  ${l}`),
    ...shareSection(SAMBA_SHARE, shares[SAMBA_SHARE]!, names, p.share),
  ];
  for (const [name, dir] of Object.entries(shares)) if (name !== SAMBA_SHARE) lines.push(...shareSection(name, dir, names, []));
  return lines.join('\n') + '\n';
}

/** smbclient's own private configuration: without -s it reads /etc/samba and writes /var/cache/samba. */
function clientConf(dir: string): string {
  return [
    '# written by test/helpers/samba.ts (for smbclient)',
    '[global]',
    `  private dir = ${path.join(dir, 'private')}`,
    `  lock directory = ${path.join(dir, 'lock')}`,
    `  state directory = ${path.join(dir, 'state')}`,
    `  cache directory = ${path.join(dir, 'cache')}`,
    `  ncalrpc dir = ${path.join(dir, 'lock', 'ncalrpc')}`,
    `  log file = ${path.join(dir, 'smbclient.log')}`,
    '  client use kerberos = off',
    '',
  ].join('\n');
}

// --- processes ------------------------------------------------------------

interface ProcInfo { pid: number; ppid: number; pgrp: number; state: string; comm: string; argv: string[]; exe: string }

/** Every process in /proc (zombies included; callers decide). */
function listProcs(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'latin1');
      const close = stat.lastIndexOf(')');
      const fields = stat.slice(close + 2).split(' ');
      const argv = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
      let exe = '';
      try { exe = fs.readlinkSync(`/proc/${name}/exe`); } catch { /* a zombie, or not ours to read */ }
      out.push({
        pid: Number(name), state: fields[0]!, ppid: Number(fields[1]), pgrp: Number(fields[2]),
        comm: stat.slice(stat.indexOf('(') + 1, close), argv, exe,
      });
    } catch { /* gone meanwhile */ }
  }
  return out;
}

const SAMBA_EXE = /^\/usr\/(sbin\/smbd|libexec\/samba\/)/;

/**
 * Live (non-zombie) processes of a server: those with its (unique) smb.conf on
 * the command line, and Samba executables in its process group (should a
 * Samba version rewrite its argv). Pids alone are never trusted: they are
 * reused quickly when many tests fork.
 */
function serverProcs(pid: number, conf: string): ProcInfo[] {
  return listProcs().filter((p) => p.state !== 'Z' &&
    (p.argv.some((a) => a === conf || a === `--configfile=${conf}`) || (p.pgrp === pid && SAMBA_EXE.test(p.exe))));
}

/** Pids of every live process belonging to a server (listener, helpers, connections, samba-dcerpcd). */
export function serverPids(server: SambaServer): number[] {
  return serverProcs(server.pid, inside(server).conf).map((p) => p.pid);
}

/** Pids of the per-connection smbd children (one per client connection), not the listener. */
export function connectionPids(server: SambaServer): number[] {
  // The listener's children are smbd-notifyd, cleanupd (own comm names) and
  // one plain `smbd` per accepted connection.
  const conf = inside(server).conf;
  return listProcs().filter((p) => p.ppid === server.pid && p.state !== 'Z' && p.comm === 'smbd' && p.argv.includes(conf)).map((p) => p.pid);
}

/**
 * SIGKILLs every per-connection smbd (the listener keeps running): the
 * client's TCP connection is closed under it, as when a server dies mid-transfer.
 * Returns the pids killed; resolves when they are gone.
 */
export async function dropConnections(server: SambaServer): Promise<number[]> {
  const pids = connectionPids(server);
  for (const pid of pids) signal(pid, 'SIGKILL');
  await waitGone(pids, 5_000);
  return pids;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try { process.kill(pid, sig); } catch { /* already gone */ }
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function waitGone(pids: number[], ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (pids.some(alive)) {
    if (Date.now() > until) return false;
    await sleep(25);
  }
  return true;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const s of running) {
      const i = internals.get(s);
      if (!i) continue;
      for (const p of serverProcs(s.pid, i.conf)) signal(p.pid, 'SIGKILL');
    }
  });
}

async function stopServer(server: SambaServer): Promise<void> {
  const i = inside(server);
  const conf = i.conf;
  i.child.ref(); // keep the loop alive until we have seen the listener's exit
  // TERM first: the listener tidies its tdbs; then KILL whatever is left
  // (connection children and samba-dcerpcd outlive a TERMed listener).
  for (const p of serverProcs(server.pid, conf)) signal(p.pid, 'SIGTERM');
  const until = Date.now() + STOP_GRACE_MS;
  for (;;) {
    const left = serverProcs(server.pid, conf);
    if (left.length === 0) break;
    if (Date.now() > until) {
      for (const p of left) signal(p.pid, 'SIGKILL');
      if (!(await waitGone(left.map((p) => p.pid), 5_000))) {
        throw new Error(`samba on port ${server.port}: processes ${left.map((p) => p.pid).join(', ')} survive SIGKILL`);
      }
      break;
    }
    await sleep(25);
  }
  await i.exited;
  try { fs.closeSync(i.lifeline); } catch { /* closed before */ }
  running.delete(server);
}

// --- set-up ---------------------------------------------------------------

let userReady = false;
/** Creates SAMBA_USER once per process (tolerates a parallel test file creating it first). */
function ensureUser(): void {
  if (userReady) return;
  if (spawnSync('id', ['-u', SAMBA_USER]).status !== 0) {
    const r = spawnSync('useradd', ['-M', '-s', '/usr/sbin/nologin', SAMBA_USER], { encoding: 'utf8' });
    // 9: the name exists (another test process won the race)
    if (r.status !== 0 && r.status !== 9) throw new Error(`useradd ${SAMBA_USER} failed (${r.status}): ${r.stderr}`);
  }
  userReady = true;
}

/** Every ancestor of dir must let "other" (the share user) traverse it. */
function assertTraversable(dir: string): void {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) {
      throw new Error(`samba: ${d} is not traversable by ${SAMBA_USER} (mode ${(fs.statSync(d).mode & 0o777).toString(8)}); ` +
        'set HOLDFAST_TEST_TMP to a world-traversable directory such as /var/tmp');
    }
    if (d === path.dirname(d)) return;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

function logTail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Starts a private smbd serving `root` (empty, created here, owned by
 * SAMBA_USER) as share SAMBA_SHARE, plus `opts.shares` (name → existing,
 * world-traversable directory; they get the profile's global settings and the
 * names mode, not shadow copies). Resolves once the port accepts and a real
 * smbclient has listed the share (20 s limit; the error carries the log tail).
 * Stops in t.teardown (after tmpDir's removal is queued, so before it runs).
 */
export async function startSamba(t: Test, opts: { profile: SambaProfile; shares?: Record<string, string>; names?: SambaNames }): Promise<SambaServer> {
  ensureUser();
  installExitHook();
  const started = Date.now();
  const base = tmpDir(t, 'hf-samba-');
  fs.chmodSync(base, 0o755); // mkdtemp makes it 0700; the share user must traverse it
  assertTraversable(base);
  const pw = spawnSync('id', ['-u', SAMBA_USER], { encoding: 'utf8' });
  const uid = Number(pw.stdout.trim());
  const gid = Number(spawnSync('id', ['-g', SAMBA_USER], { encoding: 'utf8' }).stdout.trim());

  const root = path.join(base, 'share');
  const snapDir = path.join(base, 'snapshots');
  const d = {
    private: path.join(base, 'samba', 'private'),
    lock: path.join(base, 'samba', 'lock'),
    state: path.join(base, 'samba', 'state'),
    cache: path.join(base, 'samba', 'cache'),
    pid: path.join(base, 'samba', 'pid'),
    log: path.join(base, 'samba', 'log'),
  };
  for (const dir of [root, snapDir, ...Object.values(d)]) fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  fs.chmodSync(d.private, 0o700);
  fs.chownSync(root, uid, gid);
  for (const sub of ['private', 'lock', 'state', 'cache']) fs.mkdirSync(path.join(base, 'client', sub), { recursive: true });
  const shares: Record<string, string> = { [SAMBA_SHARE]: root };
  for (const [name, dir] of Object.entries(opts.shares ?? {})) {
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name) || name.toLowerCase() === SAMBA_SHARE || /^(global|homes|printers|ipc\$)$/i.test(name)) {
      throw new Error(`samba: invalid extra share name '${name}'`);
    }
    if (/[\n\r]/.test(dir)) throw new Error(`samba: share path with a newline: ${JSON.stringify(dir)}`);
    assertTraversable(dir);
    shares[name] = path.resolve(dir);
  }

  const conf = path.join(base, 'samba', 'smb.conf');
  const cConf = path.join(base, 'client', 'smb.conf');
  fs.writeFileSync(cConf, clientConf(path.join(base, 'client')));
  const password = randomBytes(12).toString('base64url');
  const authFile = path.join(base, 'client', 'auth');
  fs.writeFileSync(authFile, `username = ${SAMBA_USER}\npassword = ${password}\ndomain = ${WORKGROUP}\n`, { mode: 0o600 });
  const logFile = path.join(d.log, 'log.smbd');

  // A port picked by the kernel can be taken by someone else before smbd binds
  // it: then smbd exits, and we try another.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    fs.writeFileSync(conf, serverConf(d, port, opts.profile, opts.names ?? 'verbatim', shares, snapDir));
    if (attempt === 0) {
      const r = spawnSync('smbpasswd', ['-c', conf, '-s', '-a', SAMBA_USER], { input: `${password}\n${password}\n`, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`smbpasswd -a ${SAMBA_USER} failed (${r.status}): ${r.stdout}${r.stderr}`);
    }
    // stderr goes to a file, not a pipe: a pipe would hold the event loop open
    const stderrFile = path.join(d.log, `smbd.stderr.${attempt}`);
    const errFd = fs.openSync(stderrFile, 'w');
    // stdin is a FIFO whose only writer is this process, and nobody writes:
    // smbd -F exits on EOF there, which the kernel delivers however this
    // process dies (even SIGKILL). (Not stdio 'pipe': node makes that a
    // socketpair, and smbd serves a socket on stdin as an inetd connection.)
    const fifo = path.join(base, 'samba', `lifeline.${attempt}`);
    const mk = spawnSync('mkfifo', ['-m', '0600', fifo], { encoding: 'utf8' });
    if (mk.status !== 0) throw new Error(`mkfifo ${fifo} failed: ${mk.stderr}`);
    const readFd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const lifeline = fs.openSync(fifo, fs.constants.O_WRONLY); // O_CLOEXEC: no other child inherits it
    const child = spawn('smbd', ['-F', '--no-process-group', '-s', conf, '-l', d.log], { detached: true, stdio: [readFd, 'ignore', errFd] });
    fs.closeSync(errFd);
    fs.closeSync(readFd);
    let exitStatus: string | undefined;
    const exited = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => { exitStatus = sig ?? `exit code ${code}`; resolve(); });
      child.once('error', (e) => { exitStatus = e.message; resolve(); });
    });
    child.unref();
    if (child.pid === undefined) {
      await exited;
      throw new Error(`samba: cannot start smbd: ${exitStatus}`);
    }
    const server: SambaServer = {
      host: '127.0.0.1', port, user: SAMBA_USER, password, domain: WORKGROUP, share: SAMBA_SHARE, root,
      pid: child.pid, profile: opts.profile, logFile,
      stop: () => stopping ??= stopServer(server),
    };
    let stopping: Promise<void> | undefined;
    internals.set(server, { base, conf, clientConf: cConf, authFile, snapDir, child, exited, lifeline });
    running.add(server);

    const ready = await waitReady(server, () => exitStatus, exited);
    if (ready === true) {
      t.teardown(() => server.stop());
      const pidFile = path.join(d.pid, 'smbd.pid');
      const filed = Number(fs.readFileSync(pidFile, 'utf8').trim());
      if (filed !== server.pid) {
        await server.stop();
        throw new Error(`samba: pid file ${pidFile} says ${filed}, we started ${server.pid}`);
      }
      startTimes.push(Date.now() - started);
      return server;
    }
    await server.stop();
    const stderr = fs.readFileSync(stderrFile, 'utf8').trimEnd();
    lastError = new Error(`samba (${opts.profile}) on 127.0.0.1:${port} did not come up: ${ready}` +
      `${stderr ? `\n--- smbd stderr ---\n${stderr}` : ''}\n--- ${logFile} (tail) ---\n${logTail(logFile)}`);
    // only a lost port race is worth another try
    if (!/open_sockets_smbd: No sockets available|Address already in use/.test(logTail(logFile, 200))) break;
  }
  throw lastError!;
}

/** Milliseconds each startSamba() took in this process (for reports). */
export const startTimes: number[] = [];

/** true, or why not: the port accepts and a real smbclient lists the share. */
async function waitReady(server: SambaServer, exitStatus: () => string | undefined, exited: Promise<void>): Promise<true | string> {
  const until = Date.now() + START_TIMEOUT_MS;
  // smbd exiting (e.g. "open_sockets_smbd: No sockets available" when another
  // process won the port) cuts a hanging smbclient short
  const gone = new AbortController();
  void exited.then(() => gone.abort());
  let why = 'timed out';
  while (Date.now() < until) {
    const status = exitStatus();
    if (status) return `smbd exited (${status})`;
    if (await portOpen(server.port)) {
      const r = await smbclient(server, 'ls', { timeoutMs: Math.max(until - Date.now(), 1000), signal: gone.signal });
      if (r.code === 0) return true;
      why = `smbclient ls: exit ${r.code ?? r.signal}: ${(r.stdout + r.stderr).trim()}`;
    } else {
      why = `port ${server.port} does not accept connections`;
    }
    await sleep(50);
  }
  return `${why} after ${START_TIMEOUT_MS} ms`;
}

// --- smbclient ------------------------------------------------------------

export interface SmbclientResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/**
 * The smbclient options a client that meets the server's profile uses:
 * 'signing', 'encrypt' and 'strict' negotiate SMB3_11 (-m) and ask for
 * signing or encryption (--client-protection, smbclient 4.17; -e is gone).
 */
export function smbclientProfileArgs(profile: SambaProfile): string[] {
  switch (profile) {
    case 'signing': return ['-m', 'SMB3_11', '--client-protection=sign'];
    case 'encrypt':
    case 'strict': return ['-m', 'SMB3_11', '--client-protection=encrypt'];
    default: return [];
  }
}

/** The smbclient argv (without -c) for this server's share: private client config, credentials from a file. */
export function smbclientArgv(server: SambaServer, opts: { args?: string[]; share?: string } = {}): string[] {
  const i = inside(server);
  return [
    '-s', i.clientConf, '-p', String(server.port), '-A', i.authFile,
    ...(opts.args ?? smbclientProfileArgs(server.profile)),
    `//127.0.0.1/${opts.share ?? server.share}`,
  ];
}

/**
 * Runs smbclient against a share with the server's private client config and
 * credentials (from an auth file, not argv). `args` replaces the profile's
 * options (smbclientProfileArgs) when given. Never rejects on a failing
 * command; look at code and output (smbclient prints NT_STATUS_* errors on stdout or stderr).
 */
export function smbclient(server: SambaServer, command: string,
  opts: { args?: string[]; share?: string; cwd?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<SmbclientResult> {
  const i = inside(server);
  const args = [...smbclientArgv(server, opts), '-c', command];
  return new Promise((resolve, reject) => {
    const child = spawn('smbclient', args, { cwd: opts.cwd ?? i.base, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => { stdout += b.toString('utf8'); });
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString('utf8'); });
    const kill = () => child.kill('SIGKILL');
    const timer = setTimeout(kill, opts.timeoutMs ?? 600_000);
    opts.signal?.addEventListener('abort', kill, { once: true });
    if (opts.signal?.aborted) kill();
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', kill);
      resolve({ code, signal: sig, stdout, stderr });
    });
  });
}

/** Quotes a path for an smbclient command line ('/' becomes '\'). */
function smbQuote(p: string): string {
  if (/["\n\r;]/.test(p)) throw new Error(`smbclient cannot address ${JSON.stringify(p)} in a -c command ('"', ';' or a newline)`);
  return `"${p.replaceAll('/', '\\')}"`;
}

function failed(r: SmbclientResult): boolean {
  return r.code !== 0 || /NT_STATUS_[A-Z_]+/.test(r.stdout + r.stderr);
}

/**
 * Downloads one file (remotePath relative to the share root, '/' separated;
 * may start with an @GMT-… token) to localFile; rejects with smbclient's output.
 */
export async function smbclientGet(server: SambaServer, remotePath: string, localFile: string): Promise<void> {
  const local = path.resolve(localFile);
  if (/["\n\r;]/.test(local)) throw new Error(`smbclientGet: unusable local path ${JSON.stringify(local)}`);
  const r = await smbclient(server, `get ${smbQuote(remotePath)} "${local}"`);
  if (failed(r)) {
    throw Object.assign(new Error(`smbclient get '${remotePath}' from //127.0.0.1:${server.port}/${server.share} failed (exit ${r.code}): ${(r.stdout + r.stderr).trim()}`), { result: r });
  }
}

/**
 * Copies the whole share into localDir (`recurse; prompt; mget *`, run in
 * localDir) with the profile's client options; resolves with wall-clock
 * seconds. smbclient exits 0 even when files fail (a name it cannot open, an
 * aborted listing), so its NT_STATUS_* lines are collected: they reject, or
 * with `allowErrors` come back in `errors`. `snapshot` (an @GMT token, 'shadow'
 * servers) mirrors that previous version instead of the live share.
 */
export async function smbclientMirror(server: SambaServer, localDir: string,
  opts: { allowErrors?: boolean; snapshot?: string } = {}): Promise<{ seconds: number; errors: string[] }> {
  fs.mkdirSync(localDir, { recursive: true });
  if (opts.snapshot !== undefined && !/^@GMT-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d$/.test(opts.snapshot)) {
    throw new Error(`smbclientMirror: not an @GMT token: ${opts.snapshot}`);
  }
  const t0 = process.hrtime.bigint();
  const r = await smbclient(server, `${opts.snapshot ? `cd "${opts.snapshot}"; ` : ''}recurse; prompt; mget *`, { cwd: localDir });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const errors = (r.stdout + r.stderr).split('\n').filter((l) => /NT_STATUS_[A-Z_]+/.test(l));
  // smbclient exits 1 after some failures (an aborted listing) and 0 after others
  if ((r.code !== 0 && errors.length === 0) || r.signal || (errors.length > 0 && !opts.allowErrors)) {
    throw Object.assign(new Error(`smbclient mget from //127.0.0.1:${server.port}/${server.share} failed (exit ${r.code}): ${(errors.length ? errors.join('\n') : r.stdout + r.stderr).trim().slice(-2000)}`), { result: r, errors });
  }
  return { seconds, errors };
}

/**
 * The share names the server announces (`smbclient -L`, over IPC$/srvsvc).
 * The first such call makes smbd start samba-dcerpcd (stop() ends it too).
 */
export async function smbclientListShares(server: SambaServer): Promise<string[]> {
  const argv = smbclientArgv(server).slice(0, -1); // without the //host/share service
  const r = spawnSync('smbclient', [...argv, '-g', '-L', '127.0.0.1'], { encoding: 'utf8', cwd: inside(server).base, timeout: 60_000 });
  if (r.status !== 0) throw new Error(`smbclient -L on port ${server.port} failed (${r.status}): ${r.stdout}${r.stderr}`);
  // -g: "Disk|name|comment"
  return r.stdout.split('\n').map((l) => l.split('|')).filter((f) => f.length >= 2 && f[0] === 'Disk').map((f) => f[1]!);
}

/** One SMB session as smbstatus sees it on the server. */
export interface SambaSession {
  /** The per-connection smbd serving it. */
  pid: number;
  username: string;
  /** e.g. 'SMB3_11' */
  dialect: string;
  /** cipher, e.g. 'AES-128-GCM', or '-'; degree 'none' | 'partial' | 'full' */
  encryption: { cipher: string; degree: string };
  signing: { cipher: string; degree: string };
}

/** The server's current sessions (`smbstatus -j` with the server's smb.conf); `shares` are its tree connects. */
export function sambaSessions(server: SambaServer): (SambaSession & { shares: string[] })[] {
  const r = spawnSync('smbstatus', ['-s', inside(server).conf, '-j'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`smbstatus failed (${r.status}): ${r.stdout}${r.stderr}`);
  const json = JSON.parse(r.stdout) as {
    sessions?: Record<string, {
      server_id: { pid: string }; username: string; session_dialect: string;
      encryption: { cipher: string; degree: string }; signing: { cipher: string; degree: string };
    }>;
    tcons?: Record<string, { service: string; server_id: { pid: string } }>;
  };
  const tcons = Object.values(json.tcons ?? {});
  return Object.values(json.sessions ?? {}).map((x) => ({
    pid: Number(x.server_id.pid), username: x.username, dialect: x.session_dialect,
    encryption: x.encryption, signing: x.signing,
    shares: tcons.filter((c) => c.server_id.pid === x.server_id.pid).map((c) => c.service),
  }));
}

/** An interactive smbclient kept connected (commands on stdin), for tests that need a live session. */
export interface OpenSmbclient {
  child: ChildProcess;
  /** The session the server made for it. */
  session: SambaSession;
  /** What smbclient printed (its stdout is block-buffered on a pipe: complete only after close()). */
  output(): string;
  /** Sends `quit` and waits for smbclient to exit (kills it after 5 s). */
  close(): Promise<void>;
}

/** Starts smbclient interactively and waits until the server lists its session (rejects if it exits first). */
export async function openSmbclient(server: SambaServer, opts: { args?: string[]; share?: string } = {}): Promise<OpenSmbclient> {
  const before = new Set(sambaSessions(server).map((s) => s.pid));
  const child = spawn('smbclient', smbclientArgv(server, opts), { cwd: inside(server).base, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => { out += b.toString('utf8'); });
  child.stderr.on('data', (b: Buffer) => { out += b.toString('utf8'); });
  let exited = false;
  const closed = new Promise<void>((resolve) => child.once('close', () => { exited = true; resolve(); }));
  // smbclient's stdout is block-buffered on a pipe: readiness is what the server sees
  const share = opts.share ?? server.share;
  const until = Date.now() + 10_000;
  for (;;) {
    const session = sambaSessions(server).find((s) => !before.has(s.pid) && s.shares.includes(share));
    if (session) {
      return {
        child, session, output: () => out,
        close: async () => {
          if (!exited) child.stdin.end('quit\n');
          const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
          await closed;
          clearTimeout(timer);
        },
      };
    }
    if (exited || Date.now() > until) {
      child.kill('SIGKILL');
      await closed;
      throw new Error(`smbclient did not open a session on port ${server.port}: ${out.trim()}`);
    }
    await sleep(25);
  }
}

// --- shadow copies --------------------------------------------------------

/** The token shadow_copy2 (shadow:format) and SMB clients use for a time: @GMT-YYYY.MM.DD-HH.MM.SS, UTC. */
export function gmtToken(date: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `@GMT-${date.getUTCFullYear()}.${p(date.getUTCMonth() + 1)}.${p(date.getUTCDate())}-` +
    `${p(date.getUTCHours())}.${p(date.getUTCMinutes())}.${p(date.getUTCSeconds())}`;
}

/**
 * For a 'shadow' server: copies the share's current content (modes, times,
 * symlinks as they are) into <snapshots>/@GMT-…/ so that it shows up as the
 * previous version at `date` (whole seconds, UTC). Returns the @GMT token, to be
 * used as the first path component: `get "@GMT-2024.01.02-03.04.05\file"`.
 */
export function makeShadowSnapshot(server: SambaServer, date: Date): string {
  if (server.profile !== 'shadow') throw new Error(`makeShadowSnapshot: server has profile '${server.profile}', not 'shadow'`);
  const token = gmtToken(date);
  const dest = path.join(inside(server).snapDir, token);
  if (fs.existsSync(dest)) throw new Error(`makeShadowSnapshot: ${token} exists already`);
  fs.cpSync(server.root, dest, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
  return token;
}
