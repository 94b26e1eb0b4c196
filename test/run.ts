// `npm test`: type-check, then every test/**/*.test.ts with tap, then one
// summary line `N passed, N failed[, N skipped]` (the type check counts as one
// test). Arguments are passed to tap (e.g. a test file to run alone).
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const bin = (name: string) => path.join(root, 'node_modules', '.bin', name);
const env = { ...process.env, PATH: `${path.join(root, 'node_modules', '.bin')}:${process.env.PATH ?? ''}` };

let passed = 0;
let failed = 0;
let skipped = 0;

console.log('# typecheck: tsc --noEmit');
const tsc = spawnSync(bin('tsc'), ['--noEmit', '-p', root], { stdio: 'inherit', env });
if (tsc.status === 0) passed++;
else failed++;

const tap = spawn(bin('tap'), ['--reporter=tap', ...process.argv.slice(2)], { cwd: root, env, stdio: ['ignore', 'pipe', 'inherit'] });
// A test is a file's top-level t.test() (TAP indented by 4). A file that fails
// outside its tests (a crash, a leak caught by tap) counts as one more failure.
let fileFailedTests = 0;
let buffered = '';
const onLine = (line: string) => {
  const sub = /^ {4}(not )?ok \d+ - .*?(# (SKIP|TODO)\b.*)?$/.exec(line);
  if (sub) {
    if (sub[3]) skipped++;
    else if (sub[1]) { failed++; fileFailedTests++; }
    else passed++;
    return;
  }
  const file = /^(not )?ok \d+ - /.exec(line);
  if (file) {
    if (file[1] && fileFailedTests === 0) failed++;
    fileFailedTests = 0;
  }
};
tap.stdout.on('data', (chunk: Buffer) => {
  process.stdout.write(chunk);
  buffered += chunk.toString('utf8');
  const lines = buffered.split('\n');
  buffered = lines.pop() ?? '';
  lines.forEach(onLine);
});
const code: number = await new Promise((resolve) => tap.on('close', (c) => resolve(c ?? 1)));
if (buffered) onLine(buffered);
if (code !== 0 && failed === 0) {
  console.log(`# tap exited with ${code} without a failing test; counting that as a failure`);
  failed++;
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 ? 1 : 0);
