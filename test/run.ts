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

/** Runs tap over args and counts its tests into passed/failed/skipped. */
async function runTap(args: string[], extraEnv: Record<string, string> = {}): Promise<void> {
  const tap = spawn(bin('tap'), ['--reporter=tap', ...args], { cwd: root, env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'inherit'] });
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
}

const args = process.argv.slice(2);
await runTap(args);
// In CI the whole network boot (test/pxe.test.ts, skipped above) runs after
// everything else, alone: its virtual machine needs both cores (under TCG a
// parallel suite made it miss its time limits). About 12 minutes with the
// image cached, 16 when it is built.
if (process.env.CI === 'true' && args.length === 0 && process.getuid?.() === 0) {
  console.log('# CI: the network boot end to end (npm run test:pxe\'s test/pxe.test.ts), alone');
  await runTap(['--timeout=5400', 'test/pxe.test.ts'], { HOLDFAST_PXE: '1' });
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 ? 1 : 0);
