#!/usr/bin/env -S node --max-semi-space-size=2 --heap-growing-percent=20
// The `holdfast` command. Plain JavaScript on purpose: runtime policy is set
// before any TypeScript is loaded: the V8 flags (shebang; runtime.mjs), the
// threadpool size, and Node's compile cache, which also keeps the
// type-stripped sources, so that later runs neither strip again nor load the
// stripper (about 35 MB less memory, 0.1 s faster start).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import module from 'node:module';
import { fileURLToPath } from 'node:url';

import { NODE_MAJOR, V8_FLAGS, cacheRoot } from './runtime.mjs';

if (Number(process.versions.node.split('.')[0]) < NODE_MAJOR) {
  // Started by an older Node on the PATH: run again on the project's pinned one.
  const pinned = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));
  if (!existsSync(pinned)) {
    process.stderr.write(`holdfast needs Node ${NODE_MAJOR}: run \`npm install\` in the Holdfast checkout, then \`npx holdfast\`\n`);
    process.exit(1);
  }
  const r = spawnSync(pinned, [...V8_FLAGS, fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
process.env.UV_THREADPOOL_SIZE ??= '4';
try {
  module.enableCompileCache(`${cacheRoot()}/compile`);
} catch {
  // an unwritable cache only costs start-up time and memory
}
if (process.argv[2] === '_job-worker') {
  // A job worker of holdfast-engine (appliance/engine/job-worker.ts): not a
  // command. Signals to the process group are the engine's to act on (it
  // cancels the job), from the first moment, before anything loads.
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => undefined);
  const { workerMain } = await import('../engine/job-worker.ts');
  process.exit(await workerMain());
} else {
  const { main } = await import('./main.ts');
  process.exitCode = await main(process.argv.slice(2));
}
