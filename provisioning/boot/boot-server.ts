// The vendor technician's boot server: network-boots a customer's box into
// the Holdfast live image, without touching the customer's DHCP server.
//
// Two parts, both started by startBootServer():
//  - a static HTTP server (node:http) that serves the customer boot directory
//    (vmlinuz, initrd.img, filesystem.squashfs, provisioning.cpio.gz) and a
//    generated iPXE script at /boot.ipxe;
//  - dnsmasq as proxy-DHCP + TFTP only (see dnsmasqConf below): the
//    customer's own DHCP server hands out the address, dnsmasq adds the PXE
//    boot information. A plain PXE ROM (BIOS) is sent undionly.kpxe by TFTP, a
//    UEFI PXE client ipxe.efi; both are iPXE, which asks again, is recognised
//    (user class "iPXE" / option 175) and is sent the HTTP URL of boot.ipxe.
//    A client that is iPXE already (QEMU's NIC ROMs, many NICs flashed with
//    iPXE) goes straight to boot.ipxe. No client is ever sent iPXE again, so
//    there is no chainload loop.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { BOOT_FILES } from '../image/customer.ts';

export { BOOT_FILES };

/** Where Debian's `ipxe` package puts the iPXE loaders. */
export const IPXE_DIR = '/usr/lib/ipxe';
/** BIOS loader (uses the PXE ROM's UNDI driver), UEFI loaders (own drivers; firmware SNP only). */
export const IPXE_LOADERS = ['undionly.kpxe', 'ipxe.efi', 'snponly.efi'] as const;

export interface BootRequest {
  method: string;
  path: string;
  status: number;
  /** Body bytes actually sent (0 for HEAD, less than the file if the client went away). */
  bytes: number;
  remote: string;
}

export interface BootServerOptions {
  /** The customer boot directory: vmlinuz, initrd.img, filesystem.squashfs, provisioning.cpio.gz, cmdline. */
  dir: string;
  /** This machine's IPv4 address on the customer LAN (a /24 is assumed). */
  address: string;
  /** The network interface that has `address`. */
  interface: string;
  /** Default 8080. 0 picks a free port. */
  httpPort?: number;
  /** Generated files, dnsmasq's log, lease and pid files, the TFTP root. */
  stateDir: string;
  /** One JSON object per line: what happens (requests, dnsmasq start and exit). */
  log?: (line: string) => void;
  /** UEFI loader sent to UEFI PXE clients: ipxe.efi (default) or snponly.efi. */
  efiLoader?: 'ipxe.efi' | 'snponly.efi';
  /** Directory holding the iPXE loaders (default /usr/lib/ipxe). */
  ipxeDir?: string;
  /** The dnsmasq binary (default `dnsmasq` from PATH). */
  dnsmasq?: string;
}

export interface BootServer {
  /** http://ADDRESS:PORT, no trailing slash. */
  httpUrl: string;
  /** dnsmasq's pid (the HTTP server runs in this process). */
  pids: number[];
  /** The generated dnsmasq configuration file and its log. */
  dnsmasqConfFile: string;
  dnsmasqLog: string;
  /** Every HTTP request served so far, in order. */
  requests: BootRequest[];
  /** Resolves when dnsmasq exits (after close(), or on its own: then network boot has stopped working). */
  dnsmasqExited: Promise<{ code: number | null; signal: string | null }>;
  /** Kills dnsmasq (SIGTERM, SIGKILL after 5 s) and closes the HTTP server; idempotent. */
  close(): Promise<void>;
}

/** The network (x.y.z.0) of an address in a /24. */
export function network24(address: string): string {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address);
  if (!m || m.slice(1).some((p) => Number(p) > 255)) throw new Error(`not an IPv4 address: ${JSON.stringify(address)}`);
  return `${m[1]}.${m[2]}.${m[3]}.0`;
}

/** Whether every directory from / down to `dir` has the x bit for others. */
function reachableByOthers(dir: string): boolean {
  let d = path.resolve(dir);
  for (;;) {
    if ((fs.statSync(d).mode & 0o001) === 0) return false;
    const up = path.dirname(d);
    if (up === d) return true;
    d = up;
  }
}

/** Reads and checks `cmdline`: one line of kernel arguments. */
export function readCmdline(dir: string): string {
  const file = path.join(dir, 'cmdline');
  const text = fs.readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  if (/[\r\n]/.test(text)) throw new Error(`${file}: kernel arguments must be one line`);
  // iPXE would expand ${...} itself; a customer cmdline has no business doing that
  if (text.includes('${')) throw new Error(`${file}: "\${" is not allowed (iPXE would expand it)`);
  return text.trim();
}

/**
 * The iPXE script served at /boot.ipxe (and put in the TFTP root).
 *
 * The `initrd=NAME` kernel arguments: a UEFI boot runs the kernel's EFI stub,
 * which loads exactly the initrds named by `initrd=` from the file system iPXE
 * exposes, where each downloaded image is a file named after the last part of
 * its URL (so the names must match: initrd.img, provisioning.cpio.gz; Debian
 * bookworm's iPXE, 2019, has no "initrd.magic" / LoadFile2 initrd, so they are
 * required there). A BIOS boot goes through iPXE's bzImage loader, which
 * passes every downloaded image to the kernel itself in download order and
 * leaves `initrd=NAME` on the command line, where Linux ignores it (its own
 * initrd= wants an address). One script boots both.
 *
 * On failure it waits 10 s, forgets the images of the failed attempt (so a
 * retry does not boot two initrd.img), and fetches the script again; if that
 * fails too the lease may be gone, so it renews DHCP first (and keeps
 * retrying DHCP every 10 s until it works).
 */
export function bootScript(httpUrl: string, cmdline: string): string {
  const args = ['initrd=initrd.img', 'initrd=provisioning.cpio.gz', cmdline, `fetch=${httpUrl}/filesystem.squashfs`].filter((a) => a !== '').join(' ');
  return [
    '#!ipxe',
    `echo Holdfast network boot from ${httpUrl}`,
    `kernel ${httpUrl}/vmlinuz ${args} || goto failed`,
    `initrd ${httpUrl}/initrd.img || goto failed`,
    `initrd ${httpUrl}/provisioning.cpio.gz || goto failed`,
    'boot || goto failed',
    ':failed',
    'echo Holdfast network boot failed; retrying in 10 s',
    'imgfree',
    'sleep 10',
    `chain ${httpUrl}/boot.ipxe || goto renew`,
    ':renew',
    'echo Holdfast: cannot fetch the boot script; renewing DHCP',
    'dhcp || goto nodhcp',
    `chain ${httpUrl}/boot.ipxe || goto failed`,
    'goto failed',
    ':nodhcp',
    'echo Holdfast: DHCP failed; retrying in 10 s',
    'sleep 10',
    'goto renew',
    '',
  ].join('\n');
}

export interface DnsmasqConfOptions {
  /** The boot server's address on the LAN (/24). */
  address: string;
  interface: string;
  /** Where iPXE fetches boot.ipxe, vmlinuz, … (http://ADDRESS:PORT). */
  httpUrl: string;
  tftpRoot: string;
  leaseFile: string;
  pidFile: string;
  logFile: string;
  /** Default ipxe.efi. */
  efiLoader?: 'ipxe.efi' | 'snponly.efi';
  /**
   * Keep dnsmasq running as root instead of its default drop to "nobody";
   * needed when nobody cannot reach the TFTP root (a private state dir).
   */
  keepRoot?: boolean;
}

/**
 * The dnsmasq configuration of the boot server, commented line by line (the
 * docs show it as generated). Proxy-DHCP + TFTP only: no DNS, no addresses.
 */
export function dnsmasqConf(o: DnsmasqConfOptions): string {
  const net = network24(o.address);
  const efi = o.efiLoader ?? 'ipxe.efi';
  for (const v of [o.interface, o.tftpRoot, o.leaseFile, o.pidFile, o.logFile, o.httpUrl]) {
    if (/[\s,"#]/.test(v)) throw new Error(`dnsmasq: value with a space, comma, quote or # not allowed: ${JSON.stringify(v)}`);
  }
  return `# Holdfast boot server: dnsmasq as proxy-DHCP + TFTP only (generated by
# provisioning/boot/boot-server.ts; started as
#   dnsmasq --keep-in-foreground --conf-file=THIS_FILE).
# The customer's own DHCP server keeps handing out the addresses; this one
# only adds the network-boot information for PXE clients.

# No DNS server (port 0 turns DNS off).
port=0

# Listen only on the interface that faces the customer's LAN, and bind to it
# alone (not the wildcard address), so nothing else on this machine clashes.
interface=${o.interface}
bind-interfaces

# Proxy-DHCP on the LAN's subnet: never offers an address, only answers PXE
# clients (vendor class "PXEClient") with boot information, next to the offer
# of the customer's DHCP server. Subnet derived from ${o.address}, a /24.
dhcp-range=${net},proxy,255.255.255.0

# Keep the file and server-name fields of the reply for what they say (some
# PXE ROMs break when they carry extra options).
dhcp-no-override

${o.keepRoot ? `# Stay root: the TFTP root (in a private directory) is out of reach of the
# unprivileged user dnsmasq would otherwise switch to. (TFTP stays read-only
# and confined to tftp-root.)
user=root

` : ''}# Log every DHCP exchange in detail (the test and the technician read it).
log-dhcp
log-facility=${o.logFile}
dhcp-leasefile=${o.leaseFile}
pid-file=${o.pidFile}

# dnsmasq's own read-only TFTP server, for the iPXE loaders (and boot.ipxe).
enable-tftp
tftp-root=${o.tftpRoot}

# Tag the requests that come from iPXE: iPXE sends user class "iPXE" and
# option 175 (its feature list). Either sets the tag "ipxe".
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:ipxe,175

# A PXE client that is not iPXE yet is sent iPXE by TFTP: one menu item per
# architecture, so it boots without a prompt. The basenames have a suffix,
# so dnsmasq sends them as they are (a basename without a dot would get the
# PXE "layer" suffix .0 appended: undionly -> undionly.0).
#   x86PC (arch 0): a BIOS PXE ROM -> undionly.kpxe (iPXE over the ROM's UNDI driver)
pxe-service=tag:!ipxe,x86PC,"Holdfast network boot (BIOS)",undionly.kpxe
#   BC_EFI (arch 7, what x86-64 UEFI firmware actually sends) and
#   x86-64_EFI (arch 9, the RFC 4578 number): UEFI -> ${efi}
pxe-service=tag:!ipxe,BC_EFI,"Holdfast network boot (UEFI)",${efi}
pxe-service=tag:!ipxe,x86-64_EFI,"Holdfast network boot (UEFI)",${efi}

# iPXE (whether it came from us or is the NIC's own ROM) gets no menu, only
# the boot file: the URL of the script, by HTTP. It never gets a loader
# again, so there is no chainload loop. (In proxy mode dnsmasq puts the
# dhcp-boot file name of a matching tag into its proxy reply.) The server
# address (after an empty server name) is required: iPXE takes a proxy
# answer only with a boot file AND a next-server address (siaddr), which
# dnsmasq leaves at 0.0.0.0 in proxy mode unless given here.
dhcp-boot=tag:ipxe,${o.httpUrl}/boot.ipxe,,${o.address}
`;
}

/**
 * Starts the HTTP server on address:httpPort and dnsmasq on the interface;
 * resolves once both are ready (rejects with dnsmasq's log if it exits).
 */
export async function startBootServer(o: BootServerOptions): Promise<BootServer> {
  const log = (msg: string, fields: Record<string, unknown> = {}) => o.log?.(JSON.stringify({ msg, ...fields }));
  network24(o.address);
  const cmdline = readCmdline(o.dir);
  for (const f of BOOT_FILES) {
    if (!fs.existsSync(path.join(o.dir, f))) log('missing boot file', { file: path.join(o.dir, f) });
  }

  fs.mkdirSync(o.stateDir, { recursive: true });
  const tftpRoot = path.join(o.stateDir, 'tftp');
  fs.rmSync(tftpRoot, { recursive: true, force: true });
  fs.mkdirSync(tftpRoot, { mode: 0o755 });
  fs.chmodSync(tftpRoot, 0o755);
  const ipxeDir = o.ipxeDir ?? IPXE_DIR;
  for (const f of IPXE_LOADERS) {
    const src = path.join(ipxeDir, f);
    if (!fs.existsSync(src)) {
      if (f !== 'snponly.efi') throw new Error(`${src} is missing (apt-get install ipxe)`);
      continue;
    }
    fs.copyFileSync(src, path.join(tftpRoot, f));
    fs.chmodSync(path.join(tftpRoot, f), 0o644);
  }
  const efiLoader = o.efiLoader ?? 'ipxe.efi';
  if (!fs.existsSync(path.join(tftpRoot, efiLoader))) throw new Error(`${path.join(ipxeDir, efiLoader)} is missing`);
  // dnsmasq started as root switches to "nobody" and then serves the TFTP
  // files: it can only if every directory above the TFTP root lets others in
  const keepRoot = process.getuid?.() === 0 && !reachableByOthers(tftpRoot);
  if (keepRoot) log('dnsmasq stays root', { reason: `${tftpRoot} is not reachable by other users (a private state dir)` });

  // HTTP first: its port makes the URL in the script and the DHCP answers.
  const requests: BootRequest[] = [];
  let script = '';
  const server = http.createServer((req, res) => {
    const started = Date.now();
    let urlPath: string;
    try {
      urlPath = new URL(req.url ?? '/', 'http://boot.invalid').pathname;
    } catch {
      urlPath = req.url ?? '';
    }
    let bytes = 0;
    res.on('close', () => {
      const r: BootRequest = { method: req.method ?? '', path: urlPath, status: res.statusCode, bytes, remote: req.socket.remoteAddress ?? '' };
      requests.push(r);
      log('http request', { ...r, complete: res.writableFinished, ms: Date.now() - started });
    });
    const fail = (status: number, text: string, headers: Record<string, string> = {}) => {
      const body = Buffer.from(`${text}\n`);
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length, ...headers });
      if (req.method === 'HEAD') res.end();
      else { bytes = body.length; res.end(body); }
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, 'method not allowed', { allow: 'GET, HEAD' });
    if (urlPath === '/boot.ipxe') {
      const body = Buffer.from(script);
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length, 'cache-control': 'no-store' });
      if (req.method === 'HEAD') return res.end();
      bytes = body.length;
      return res.end(body);
    }
    const name = urlPath.slice(1);
    if (!(BOOT_FILES as readonly string[]).includes(name)) return fail(404, 'not found');
    const file = path.join(o.dir, name);
    let fd: number;
    let size: number;
    try {
      fd = fs.openSync(file, 'r');
      const st = fs.fstatSync(fd);
      if (!st.isFile()) { fs.closeSync(fd); return fail(404, 'not found'); }
      size = st.size;
    } catch {
      return fail(404, 'not found');
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    if (req.method === 'HEAD') { fs.closeSync(fd); return res.end(); }
    // the opened fd: a file replaced meanwhile is served whole, as stat'ed
    const stream = fs.createReadStream('', { fd, end: size > 0 ? size - 1 : 0, autoClose: true });
    if (size === 0) { stream.destroy(); return res.end(); }
    stream.on('data', (chunk) => { bytes += chunk.length; });
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    stream.pipe(res);
  });
  server.keepAliveTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.httpPort ?? 8080, o.address, () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as AddressInfo).port;
  const httpUrl = `http://${o.address}:${port}`;
  script = bootScript(httpUrl, cmdline);
  fs.writeFileSync(path.join(tftpRoot, 'boot.ipxe'), script, { mode: 0o644 });
  log('http server listening', { url: httpUrl });

  const closeHttp = () => new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });

  const confFile = path.join(o.stateDir, 'dnsmasq.conf');
  const dnsmasqLog = path.join(o.stateDir, 'dnsmasq.log');
  const pidFile = path.join(o.stateDir, 'dnsmasq.pid');
  fs.writeFileSync(confFile, dnsmasqConf({
    address: o.address, interface: o.interface, httpUrl, tftpRoot, efiLoader, keepRoot,
    leaseFile: path.join(o.stateDir, 'dnsmasq.leases'), pidFile, logFile: dnsmasqLog,
  }));
  fs.rmSync(pidFile, { force: true });
  const logStart = fs.existsSync(dnsmasqLog) ? fs.statSync(dnsmasqLog).size : 0;
  const child = spawn(o.dnsmasq ?? 'dnsmasq', ['--keep-in-foreground', `--conf-file=${confFile}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString('utf8')).slice(-8000); });
  let exited: { code: number | null; signal: string | null } | undefined;
  const exitedP = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => { exited = { code, signal }; resolve(); });
    child.once('error', (err) => { stderr += String(err); exited = { code: null, signal: null }; resolve(); });
  });
  const pid = child.pid;
  const onExit = () => { try { if (pid && !exited) process.kill(pid, 'SIGKILL'); } catch { /* gone */ } };
  process.on('exit', onExit);
  let closing = false;
  void exitedP.then(() => {
    process.off('exit', onExit);
    if (!closing) log('dnsmasq exited', { pid, ...exited, stderr: stderr.trim() });
  });

  const logText = () => {
    try {
      return fs.readFileSync(dnsmasqLog, 'utf8').slice(logStart);
    } catch {
      return '';
    }
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) {
      await closeHttp();
      throw new Error(`dnsmasq exited at start (${JSON.stringify(exited)}): ${stderr.trim()}\n${logText().slice(-4000)}`);
    }
    // "started" is logged after the DHCP and TFTP sockets are bound
    if (/dnsmasq\[\d+\]: started, version/.test(logText()) && fs.existsSync(pidFile)) break;
    if (Date.now() > deadline) {
      onExit();
      await closeHttp();
      throw new Error(`dnsmasq did not start within 10 s: ${stderr.trim()}\n${logText().slice(-4000)}`);
    }
    await sleep(50);
  }
  log('dnsmasq started', { pid, conf: confFile, log: dnsmasqLog, mode: 'proxy-dhcp+tftp', interface: o.interface });

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      closing = true;
      if (pid && !exited) {
        try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
        await Promise.race([exitedP, sleep(5000)]);
        if (!exited) {
          try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
          await exitedP;
        }
      }
      await closeHttp();
      log('boot server closed');
    })();
    return closed;
  };
  const dnsmasqExited = exitedP.then(() => exited!);
  return { httpUrl, pids: pid ? [pid] : [], dnsmasqConfFile: confFile, dnsmasqLog, requests, dnsmasqExited, close };
}
