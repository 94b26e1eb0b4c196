// A PXE client that is not iPXE, as a PXE ROM speaks it, for the paths no VM
// here can take (QEMU's BIOS NIC ROMs are all iPXE): run inside the ROUTER
// namespace of helpers/netns.ts (on the LAN segment, off the boot server's
// host) by `ip netns exec`:
//   node test/helpers/pxe-client.ts ARCH MAC
// ARCH is the PXE client architecture (0 BIOS, 7 UEFI x86-64). It sends
// DHCPDISCOVER with vendor class PXEClient:Arch:ARCH and no iPXE user class to
// the subnet's broadcast address, takes the proxy-DHCP offer of 192.168.77.2
// (the one without an address), asks that server on port 4011 for the boot
// file (of its only menu item, PXE spec option 43 sub-option 71, where
// there is a menu: BIOS), and
// fetches the file by TFTP. Prints one JSON line: what was offered and the
// file's size and SHA-256.
import crypto from 'node:crypto';
import dgram from 'node:dgram';

const BOOT_SERVER = '192.168.77.2';
const BROADCAST = '192.168.77.255';
const [archText, macText] = process.argv.slice(2);
const arch = Number(archText ?? '0');
const mac = Buffer.from((macText ?? '52:54:00:aa:bb:01').split(':').map((h) => parseInt(h, 16)));
const xid = crypto.randomBytes(4);
const guid = crypto.randomBytes(16);

type Options = Map<number, Buffer>;
interface Reply { op: number; xid: Buffer; yiaddr: string; siaddr: string; file: string; options: Options }

function opt(code: number, data: Buffer | number[]): Buffer {
  const b = Buffer.isBuffer(data) ? data : Buffer.from(data);
  return Buffer.concat([Buffer.from([code, b.length]), b]);
}

function packet(type: number, extra: Buffer[], ciaddr = '0.0.0.0'): Buffer {
  const h = Buffer.alloc(236);
  h[0] = 1; h[1] = 1; h[2] = 6;
  xid.copy(h, 4);
  h.writeUInt16BE(0x8000, 10);
  Buffer.from(ciaddr.split('.').map(Number)).copy(h, 12);
  mac.copy(h, 28);
  const vendor = `PXEClient:Arch:${String(arch).padStart(5, '0')}:UNDI:002001`;
  return Buffer.concat([h, Buffer.from([0x63, 0x82, 0x53, 0x63]),
    opt(53, [type]),
    opt(55, [1, 3, 43, 54, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135]),
    opt(60, Buffer.from(vendor)),
    opt(93, [arch >> 8, arch & 0xff]),
    opt(94, [1, 2, 1]),
    opt(97, Buffer.concat([Buffer.from([0]), guid])),
    ...extra,
    Buffer.from([255])]);
}

function parse(b: Buffer): Reply | undefined {
  if (b.length < 240 || b.readUInt32BE(236) !== 0x63825363) return undefined;
  const options: Options = new Map();
  for (let i = 240; i < b.length;) {
    const code = b[i]!;
    if (code === 255) break;
    if (code === 0) { i++; continue; }
    const len = b[i + 1]!;
    options.set(code, b.subarray(i + 2, i + 2 + len));
    i += 2 + len;
  }
  const ip = (o: number) => [...b.subarray(o, o + 4)].join('.');
  const file = b.subarray(108, 236);
  return { op: b[0]!, xid: b.subarray(4, 8), yiaddr: ip(16), siaddr: ip(20), file: file.subarray(0, file.indexOf(0) < 0 ? 128 : file.indexOf(0)).toString('latin1'), options };
}

function subOptions(b: Buffer | undefined): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (let i = 0; b && i < b.length;) {
    const code = b[i]!;
    if (code === 255) break;
    if (code === 0) { i++; continue; }
    const len = b[i + 1]!;
    m.set(code, b.subarray(i + 2, i + 2 + len));
    i += 2 + len;
  }
  return m;
}

/** Sends `msg` to host:port until `accept` takes a reply (1 s between tries). */
function exchange(sock: dgram.Socket, msg: Buffer, port: number, host: string, accept: (r: Reply) => boolean, what: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    let tries = 0;
    const send = () => {
      if (++tries > 8) { cleanup(); reject(new Error(`no answer to the ${what}`)); return; }
      sock.send(msg, port, host);
    };
    const onMessage = (b: Buffer) => {
      const r = parse(b);
      if (r && r.op === 2 && r.xid.equals(xid) && accept(r)) { cleanup(); resolve(r); }
    };
    const timer = setInterval(send, 1000);
    const cleanup = () => { clearInterval(timer); sock.off('message', onMessage); };
    sock.on('message', onMessage);
    send();
  });
}

function tftpGet(host: string, file: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    const blocks: Buffer[] = [];
    let expected = 1;
    const timer = setTimeout(() => { s.close(); reject(new Error(`TFTP ${file}: timeout`)); }, 20_000);
    s.on('message', (b, rinfo) => {
      const op = b.readUInt16BE(0);
      if (op === 5) { clearTimeout(timer); s.close(); reject(new Error(`TFTP ${file}: error ${b.readUInt16BE(2)} ${b.subarray(4).toString('latin1').replace(/\0.*$/, '')}`)); return; }
      if (op !== 3) return;
      const block = b.readUInt16BE(2);
      if (block === (expected & 0xffff)) { blocks.push(b.subarray(4)); expected++; }
      const ack = Buffer.alloc(4);
      ack.writeUInt16BE(4, 0);
      ack.writeUInt16BE(block, 2);
      const last = b.length - 4 < 512 && block === ((expected - 1) & 0xffff);
      // the final ACK must leave before the socket closes (dnsmasq logs the transfer on it)
      s.send(ack, rinfo.port, rinfo.address, () => {
        if (last) { clearTimeout(timer); s.close(); resolve(Buffer.concat(blocks)); }
      });
    });
    s.bind(0, () => s.send(Buffer.concat([Buffer.from([0, 1]), Buffer.from(`${file}\0octet\0`, 'latin1')]), 69, host));
  });
}

const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
await new Promise<void>((resolve) => sock.bind(68, () => resolve()));
sock.setBroadcast(true);
try {
  const offer = await exchange(sock, packet(1, []), 67, BROADCAST,
    (r) => r.options.get(54)?.join('.') === BOOT_SERVER && r.options.get(53)?.[0] === 2, 'DHCPDISCOVER (a proxy-DHCP offer)');
  const pxe = subOptions(offer.options.get(43));
  const menu = pxe.get(9);
  const result: Record<string, unknown> = {
    msg: 'ok',
    offer: { yiaddr: offer.yiaddr, siaddr: offer.siaddr, file: offer.file, vendorClass: offer.options.get(60)?.toString('latin1'), menu: menu ? menu.subarray(3, 3 + menu[2]!).toString('latin1') : null },
  };
  let file = offer.file;
  let server = offer.siaddr !== '0.0.0.0' ? offer.siaddr : BOOT_SERVER;
  if (menu || !file) {
    // the boot server request (port 4011): for the first menu item, layer 0
    // (BIOS PXE); without a menu (dnsmasq sends UEFI clients none) as UEFI
    // firmware does, with no boot item
    const item = menu ? [opt(43, Buffer.concat([opt(71, [menu[0]!, menu[1]!, 0, 0]), Buffer.from([255])]))] : [];
    const ack = await exchange(sock, packet(3, item, '192.168.77.1'), 4011, BOOT_SERVER,
      (r) => r.options.get(53)?.[0] === 5, 'boot server request (port 4011)');
    file = ack.file;
    if (ack.siaddr !== '0.0.0.0') server = ack.siaddr;
    result.ack = { siaddr: ack.siaddr, file: ack.file };
  }
  if (!file) throw new Error(`no boot file offered: ${JSON.stringify(result)}`);
  const data = await tftpGet(server, file);
  result.tftp = { server, file, bytes: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex') };
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ msg: 'error', error: err instanceof Error ? err.message : String(err) })}\n`);
  process.exitCode = 1;
} finally {
  sock.close();
}
