// The network-boot chain up to the kernel download, with a fake customer boot
// directory (random bytes: the kernel load fails and the script retries, as
// it should). A throwaway customer LAN in network namespaces (helpers/netns.ts):
// the customer's own DHCP server on a "router", our boot server
// (provisioning/boot/serve.ts: dnsmasq proxy-DHCP + TFTP, HTTP) on the LAN,
// and a QEMU VM (SeaBIOS, blank disk first in the boot order, then the NIC,
// whose ROM is iPXE). Checks that the address came from the customer's
// server, the PXE information from the proxy, that iPXE was sent the script
// (not iPXE again: no chainload loop) and fetched /boot.ipxe then /vmlinuz.
// Also the HTTP server's fixed file list.
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { createLan } from './helpers/netns.ts';
import { startVm, VM_MAC } from './helpers/qemu.ts';
import { tmpDir } from './helpers/tmp.ts';

function has(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const skip = process.getuid?.() !== 0 ? 'needs root (network namespaces)'
  : !has('qemu-system-x86_64') ? 'needs qemu-system-x86_64'
  : !has('dnsmasq') ? 'needs dnsmasq'
  : !fs.existsSync('/usr/lib/ipxe/undionly.kpxe') ? 'needs the ipxe package (/usr/lib/ipxe)'
  : false;

function fakeBootDir(dir: string): string {
  const boot = path.join(dir, 'boot');
  fs.mkdirSync(boot);
  for (const f of ['vmlinuz', 'initrd.img', 'filesystem.squashfs', 'provisioning.cpio.gz']) fs.writeFileSync(path.join(boot, f), crypto.randomBytes(4096 + crypto.randomInt(4096)));
  fs.writeFileSync(path.join(boot, 'cmdline'), 'boot=live console=ttyS0 holdfast.test=1\n');
  return boot;
}

t.test('a BIOS PXE boot on the customer LAN: customer DHCP, proxy-DHCP, iPXE fetches boot.ipxe then the kernel over HTTP', { skip }, async (t) => {
  const started = Date.now();
  const secs = () => ((Date.now() - started) / 1000).toFixed(1);
  const dir = tmpDir(t, 'hf-pxe-chain-');
  const boot = fakeBootDir(dir);
  const lan = await createLan(t);
  const server = await lan.startBootServer({ dir: boot, stateDir: path.join(dir, 'state') });
  t.equal(server.httpUrl, 'http://192.168.77.2:8080', `the boot server runs in the LAN namespace (${secs()} s)`);

  // the HTTP side, from the LAN: the fixed names and nothing else
  const script = await lan.httpGetInLan(`${server.httpUrl}/boot.ipxe`);
  t.equal(script.status, 200, 'boot.ipxe is served');
  t.match(script.body, /^#!ipxe\n/, 'it is an iPXE script');
  t.match(script.body, /kernel http:\/\/192\.168\.77\.2:8080\/vmlinuz initrd=initrd\.img initrd=provisioning\.cpio\.gz boot=live console=ttyS0 holdfast\.test=1 fetch=http:\/\/192\.168\.77\.2:8080\/filesystem\.squashfs \|\| goto failed/, 'the kernel line: initrd names, the customer cmdline, fetch=');
  const kernel = await lan.httpGetInLan(`${server.httpUrl}/vmlinuz`, { method: 'HEAD' });
  t.equal(kernel.status, 200, 'HEAD /vmlinuz');
  t.equal(kernel.headers['content-length'], String(fs.statSync(path.join(boot, 'vmlinuz')).size), 'with its Content-Length');
  for (const p of ['/', '/cmdline', '/..%2fcmdline', '/../boot/cmdline', '/vmlinuz/', '/undionly.kpxe', '/etc/passwd']) {
    t.equal((await lan.httpGetInLan(`${server.httpUrl}${p}`)).status, 404, `GET ${p} is 404`);
  }
  t.equal((await lan.httpGetInLan(`${server.httpUrl}/vmlinuz`, { method: 'POST' })).status, 405, 'POST is 405');
  const before = server.requests.length;

  // a new box: blank disk first in the boot order, then the network
  const disk = path.join(dir, 'disk.raw');
  fs.writeFileSync(disk, '');
  fs.truncateSync(disk, 1024 ** 3);
  const vm = await startVm(t, { lan, disk, serialLog: path.join(dir, 'serial.log'), memoryMiB: 512 });
  t.comment(`VM started (${vm.kvm ? 'KVM' : 'TCG'}) at ${secs()} s`);
  const fail = async (err: unknown) => {
    t.comment(`serial:\n${vm.lastSerialLines(30)}`);
    t.comment(`boot server's dnsmasq:\n${server.dnsmasqLogText().split('\n').slice(-30).join('\n')}`);
    throw err;
  };
  const kernelRequest = await server.waitForRequest('/vmlinuz', 120_000, 'iPXE requests /vmlinuz from the boot server').catch(fail);
  t.pass(`iPXE requested the kernel ${secs()} s after the start`);
  await vm.waitSerial(/Holdfast network boot from http:\/\/192\.168\.77\.2:8080/, 10_000, 'the script echoes on the serial console').catch(fail);

  // the address: from the customer's DHCP server in ROUTER
  const routerLog = lan.routerDhcpLog();
  const ack = new RegExp(`DHCPACK\\(veth-rtr\\) (192\\.168\\.77\\.\\d+) ${VM_MAC}`).exec(routerLog);
  t.ok(ack, `the customer's DHCP server gave the VM ${ack?.[1] ?? 'no address'}`);
  t.equal(kernelRequest.remote, ack?.[1], 'and the kernel was requested from that address');

  // the boot information: from the proxy, to an iPXE client, the script's URL
  const proxyLog = server.dnsmasqLogText();
  t.match(proxyLog, /DHCP, proxy on subnet 192\.168\.77\.0/, 'dnsmasq runs as proxy-DHCP');
  t.match(proxyLog, new RegExp(`PXE\\(br0\\) ${VM_MAC} proxy`), 'the proxy answered the VM');
  t.match(proxyLog, /vendor class: PXEClient:Arch:00000/, 'a BIOS (x86PC) PXE client');
  t.match(proxyLog, /user class: iPXE[\s\S]*tags: ipxe, br0[\s\S]*bootfile name: http:\/\/192\.168\.77\.2:8080\/boot\.ipxe/, 'recognised as iPXE and sent the URL of boot.ipxe');
  t.notMatch(proxyLog, /bootfile name: undionly|sent \S*undionly\.kpxe/, 'iPXE was not sent undionly.kpxe (no chainload loop)');
  t.notMatch(routerLog, /bootfile name|boot\.ipxe|option: 43 |tags: .*ipxe/, 'the customer\'s DHCP server sends nothing about PXE (no boot file, no option 43)');

  // HTTP: the VM fetched the script, then the kernel
  const fromVm = server.requests.slice(before).filter((r) => r.remote === ack?.[1]).map((r) => `${r.path} ${r.status}`);
  t.same(fromVm.slice(0, 2), ['/boot.ipxe 200', '/vmlinuz 200'], `the VM's first HTTP requests: ${fromVm.slice(0, 4).join(', ')}`);
  t.equal(kernelRequest.bytes, fs.statSync(path.join(boot, 'vmlinuz')).size, 'the whole kernel file was sent');

  await vm.kill();
  await server.stop();
  t.ok(!fs.existsSync(`/proc/${server.dnsmasqPid}`) || fs.readFileSync(`/proc/${server.dnsmasqPid}/cmdline`, 'utf8').indexOf(server.dnsmasqConf) < 0, 'stopping the boot server stopped its dnsmasq');
  t.comment(`done in ${secs()} s`);
});

// QEMU's BIOS NIC ROMs are all iPXE, so no VM here takes the path of a plain
// PXE ROM: helpers/pxe-client.ts speaks it (DHCPDISCOVER as PXEClient without
// the iPXE user class, the boot server request on port 4011, TFTP) against the
// same real dnsmasq, from the router's namespace on the LAN segment.
t.test('a PXE client that is not iPXE is sent iPXE by TFTP: undionly.kpxe (BIOS), ipxe.efi (UEFI)', { skip }, async (t) => {
  const dir = tmpDir(t, 'hf-pxe-plain-');
  const boot = fakeBootDir(dir);
  const lan = await createLan(t);
  const server = await lan.startBootServer({ dir: boot, stateDir: path.join(dir, 'state') });
  const client = path.join(import.meta.dirname, 'helpers', 'pxe-client.ts');
  const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
  for (const [arch, name, loader] of [[0, 'BIOS (x86PC)', 'undionly.kpxe'], [7, 'UEFI (arch 7)', 'ipxe.efi']] as const) {
    const c = lan.exec('router', process.execPath, [client, String(arch), `52:54:00:aa:bb:0${arch}`]);
    let out = '';
    c.stdout!.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    await new Promise((resolve) => c.once('close', resolve));
    const r = JSON.parse(out.trim().split('\n').pop() || '{}') as { msg?: string; error?: string; offer?: { yiaddr: string; menu: string | null }; ack?: { file: string }; tftp?: { file: string; bytes: number; sha256: string } };
    t.equal(r.msg, 'ok', `${name}: the exchange completed${r.error ? ` (${r.error})` : ''}`);
    t.equal(r.offer?.yiaddr, '0.0.0.0', `${name}: the proxy offers no address`);
    if (arch === 0) t.match(r.offer?.menu ?? '', /Holdfast network boot/, `${name}: a PXE menu of one item, "${r.offer?.menu}"`);
    else t.equal(r.offer?.menu, null, `${name}: no PXE menu (dnsmasq sends UEFI clients none; they ask port 4011 directly)`);
    t.equal(r.ack?.file, loader, `${name}: the boot server (port 4011) names ${loader}, no ".0" appended`);
    t.equal(r.tftp?.sha256, sha(path.join('/usr/lib/ipxe', loader)), `${name}: TFTP sent /usr/lib/ipxe/${loader} (${r.tftp?.bytes} bytes)`);
  }
  const transfers = /sent \S+\/tftp\/undionly\.kpxe to 192\.168\.77\.1[\s\S]*sent \S+\/tftp\/ipxe\.efi to 192\.168\.77\.1/;
  for (let i = 0; i < 50 && !transfers.test(server.dnsmasqLogText()); i++) await new Promise((r) => setTimeout(r, 100)); // dnsmasq logs asynchronously
  t.match(server.dnsmasqLogText().split('\n').filter((l) => /tftp/.test(l)).join('\n'), /sent \S+\/tftp\/undionly\.kpxe to 192\.168\.77\.1[\s\S]*sent \S+\/tftp\/ipxe\.efi to 192\.168\.77\.1/, 'dnsmasq logged both TFTP transfers');
});
