// Runs inside the ROUTER namespace of helpers/netns.ts (via `ip netns exec`):
//   node test/helpers/uplink-forward.ts LISTEN_HOST LISTEN_PORT UNIX_SOCKET
// accepts TCP connections on LISTEN_HOST:LISTEN_PORT and pipes each one to a
// new connection to the unix socket UNIX_SOCKET, whose listener lives in the
// root namespace (a unix socket is reached through the file system, which
// the namespaces share). Prints {"msg":"uplink ready",...} once listening.
import net from 'node:net';

const [host, portText, socketPath] = process.argv.slice(2);
if (!host || !portText || !socketPath) {
  process.stderr.write('usage: uplink-forward.ts LISTEN_HOST LISTEN_PORT UNIX_SOCKET\n');
  process.exit(2);
}

const server = net.createServer((client) => {
  const upstream = net.connect({ path: socketPath });
  client.pipe(upstream);
  upstream.pipe(client);
  const end = () => { client.destroy(); upstream.destroy(); };
  client.on('error', end);
  upstream.on('error', end);
  client.on('close', end);
  upstream.on('close', end);
});
server.on('error', (err) => {
  process.stdout.write(`${JSON.stringify({ msg: 'uplink failed', error: String(err) })}\n`);
  process.exit(1);
});
server.listen(Number(portText), host, () => {
  process.stdout.write(`${JSON.stringify({ msg: 'uplink ready', listen: `${host}:${portText}`, socket: socketPath })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
