// A customer's boot directory: the shared image (hard links into the cache)
// plus provisioning.cpio.gz, the only per-customer part: a newc cpio archive
// holding holdfast/provisioning.json, loaded by iPXE as a second initrd (the
// kernel unpacks it over the image's initramfs; the init-bottom hook copies
// the file into the booted system). And `cmdline`, the kernel arguments the
// boot server's iPXE script passes.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';

import { readProvisioning } from '../../appliance/agent/index.ts';
import { HoldfastError } from '../../appliance/errors/index.ts';

/** The live system's kernel arguments: boot=live (fetch= is added by the boot server), the installer, both consoles. */
export const LIVE_CMDLINE = 'boot=live holdfast.install=auto console=tty0 console=ttyS0,115200n8 systemd.status_unit_format=name';
/** The shared image's files, hard-linked into every customer's boot directory. */
export const CUSTOMER_FILES = ['vmlinuz', 'initrd.img', 'filesystem.squashfs'] as const;
/** The customer's own file beside them: the provisioning file as a second initrd. */
export const PROVISIONING_INITRD = 'provisioning.cpio.gz';
/** What the boot server serves over HTTP from a boot directory. */
export const BOOT_FILES = [...CUSTOMER_FILES, PROVISIONING_INITRD] as const;

/** A newc ("070701") cpio archive of directories and files, all owned by root, with one mtime. */
export function cpioNewc(entries: { name: string; mode: number; data?: Buffer }[], mtime: number): Buffer {
  const parts: Buffer[] = [];
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  let ino = 1;
  const add = (name: string, mode: number, data: Buffer, nlink: number) => {
    const hex = (v: number) => v.toString(16).padStart(8, '0');
    const fields = [ino++, mode, 0, 0, nlink, mtime, data.length, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
    const header = Buffer.from(`070701${fields.map(hex).join('')}${name}\0`, 'latin1');
    parts.push(header, pad(header.length), data, pad(data.length));
  };
  for (const e of entries) add(e.name, e.mode, e.data ?? Buffer.alloc(0), e.data ? 1 : 2);
  ino = 0;
  add('TRAILER!!!', 0, Buffer.alloc(0), 1);
  return Buffer.concat(parts);
}

export interface CustomerBuild { dir: string; files: string[]; provisioning: { fleet: string; channel: string } }

/** Writes the customer's boot directory `out` from a built image directory and a provisioning file. */
export async function bakeCustomer(o: { image: string; provisioning: string; out: string; sourceDateEpoch?: number }): Promise<CustomerBuild> {
  const p = await readProvisioning(o.provisioning);
  for (const f of CUSTOMER_FILES) {
    if (!fs.existsSync(path.join(o.image, f))) throw new HoldfastError('HF_USAGE', `${o.image} is not a built image (no ${f}): run \`npm run provision -- image\` first`);
  }
  await fsp.mkdir(o.out, { recursive: true });
  for (const f of CUSTOMER_FILES) {
    const dst = path.join(o.out, f);
    await fsp.rm(dst, { force: true });
    await fsp.link(path.join(o.image, f), dst).catch(() => fsp.copyFile(path.join(o.image, f), dst));
  }
  const sde = o.sourceDateEpoch ?? Number(process.env.SOURCE_DATE_EPOCH ?? 0);
  const cpio = cpioNewc([
    { name: 'holdfast', mode: 0o040755 },
    { name: 'holdfast/provisioning.json', mode: 0o100600, data: await fsp.readFile(o.provisioning) },
  ], sde);
  await fsp.writeFile(path.join(o.out, PROVISIONING_INITRD), gzipSync(cpio, { level: 9 }), { mode: 0o600 });
  await fsp.writeFile(path.join(o.out, 'cmdline'), `${LIVE_CMDLINE}\n`);
  return { dir: o.out, files: [...BOOT_FILES, 'cmdline'], provisioning: { fleet: p.fleet, channel: p.channel } };
}
