// The boot server as a process:
//   node provisioning/boot/serve.ts --dir D --address A --interface IF \
//        [--http-port P] --state-dir S [--efi-loader ipxe.efi|snponly.efi]
// Prints JSON lines on stdout: {"msg":"boot server ready","url":…,"pids":[…]}
// once HTTP and dnsmasq are up, then one line per HTTP request and event.
// SIGTERM or SIGINT: stops dnsmasq, closes HTTP, exits 0.
import { parseArgs } from 'node:util';

import { startBootServer } from './boot-server.ts';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    address: { type: 'string' },
    interface: { type: 'string' },
    'http-port': { type: 'string', default: '8080' },
    'state-dir': { type: 'string' },
    'efi-loader': { type: 'string', default: 'ipxe.efi' },
  },
  strict: true,
});
const out = (line: string) => process.stdout.write(`${line}\n`);
const need = (name: 'dir' | 'address' | 'interface' | 'state-dir'): string => {
  const v = values[name];
  if (!v) {
    out(JSON.stringify({ msg: 'usage error', error: `--${name} is required` }));
    process.exit(2);
  }
  return v;
};
const efiLoader = values['efi-loader'];
if (efiLoader !== 'ipxe.efi' && efiLoader !== 'snponly.efi') {
  out(JSON.stringify({ msg: 'usage error', error: '--efi-loader is ipxe.efi or snponly.efi' }));
  process.exit(2);
}

try {
  const server = await startBootServer({
    dir: need('dir'),
    address: need('address'),
    interface: need('interface'),
    httpPort: Number(values['http-port']),
    stateDir: need('state-dir'),
    efiLoader,
    log: out,
  });
  out(JSON.stringify({ msg: 'boot server ready', url: server.httpUrl, pids: server.pids, conf: server.dnsmasqConfFile, dnsmasqLog: server.dnsmasqLog }));
  let stopping = false;
  const stop = () => {
    stopping = true;
    void server.close().then(() => process.exit(0));
  };
  // dnsmasq gone on its own: no more network boot, so no more boot server
  void server.dnsmasqExited.then((how) => {
    if (stopping) return;
    out(JSON.stringify({ msg: 'boot server failed', error: `dnsmasq exited (${how.code ?? how.signal}); see ${server.dnsmasqLog}` }));
    void server.close().then(() => process.exit(1));
  });
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} catch (err) {
  out(JSON.stringify({ msg: 'boot server failed', error: err instanceof Error ? err.message : String(err) }));
  process.exit(1);
}
