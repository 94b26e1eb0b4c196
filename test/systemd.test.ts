// The systemd units and the notification path: every unit passes
// `systemd-analyze verify` and rates at most 4.0 in `systemd-analyze
// security`; the engine, started with NOTIFY_SOCKET and WATCHDOG_USEC as
// systemd starts it, sends READY, STATUS (with job progress) and WATCHDOG
// to a real AF_UNIX datagram socket, from its own pid.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { V8_FLAGS } from '../appliance/cli/runtime.mjs';
import { sdNotify } from '../native/index.ts';
import { ROOT } from './helpers/cli.ts';
import { startAppliance, waitJob } from './helpers/appliance.ts';
import { notifyListener as listener } from './helpers/notify-listener.ts';
import { tmpDir } from './helpers/tmp.ts';
import { pseudoRandom } from './helpers/tree.ts';

const UNITS = ['holdfast-engine', 'holdfast-console', 'holdfast-agent'];
const UNIT_DIR = path.join(ROOT, 'appliance', 'systemd');

const haveAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

t.test('units pass systemd-analyze verify and rate at most 4.0 for exposure', { skip: haveAnalyze ? false : 'systemd-analyze is not installed' }, async (t) => {
  // A release laid out as the image installs it (/opt/holdfast/current/{bin/node,appliance}),
  // here under a temporary directory, so that verify can check the commands exist.
  const rel = tmpDir(t);
  fs.mkdirSync(path.join(rel, 'bin'));
  fs.symlinkSync(process.execPath, path.join(rel, 'bin', 'node'));
  fs.symlinkSync(path.join(ROOT, 'appliance'), path.join(rel, 'appliance'));
  for (const u of UNITS) {
    const text = fs.readFileSync(path.join(UNIT_DIR, `${u}.service`), 'utf8');
    t.match(text, /^Type=notify$/m, `${u}: Type=notify`);
    t.match(text, /^NotifyAccess=main$/m, `${u}: NotifyAccess=main (only the service's own process may notify)`);
    const exec = /^ExecStart=(\S+) (.*)$/m.exec(text);
    t.same(exec?.[2]?.split(' ').slice(0, V8_FLAGS.length), V8_FLAGS, `${u}: node runs with the V8 flags the CLI and the benchmarks use`);
    const file = path.join(rel, `${u}.service`);
    fs.writeFileSync(file, text.replaceAll('/opt/holdfast/current', rel));
    const v = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
    t.equal(v.status, 0, `${u}: systemd-analyze verify passes ${v.stderr.trim()}`);
    t.equal(v.stderr.trim(), '', `${u}: and says nothing`);
    const s = spawnSync('systemd-analyze', ['security', '--offline=true', file], { encoding: 'utf8' });
    const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(s.stdout);
    t.ok(m, `${u}: an exposure level`);
    t.ok(m && Number(m[1]) <= 4.0, `${u}: exposure ${m?.[1]} <= 4.0`);
  }
  const engine = fs.readFileSync(path.join(UNIT_DIR, 'holdfast-engine.service'), 'utf8');
  t.match(engine, /^WatchdogSec=\d+s$/m, 'the engine has a watchdog');
  t.match(engine, /^KillMode=mixed$/m, 'stopping the engine stops its job workers through it (SIGTERM to the engine only)');
  t.match(engine, /^SystemCallFilter=setpriority$/m, 'its job workers may lower their own priority');
});

async function eventually(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('the engine sends READY, STATUS with job progress, and WATCHDOG to a real datagram socket, from its own pid', async (t) => {
  const dir = tmpDir(t);
  const sock = path.join(dir, 'notify.sock');
  const l = listener(t, sock);
  await l.ready;
  t.equal(sdNotify('STATUS=probe', sock), true, 'the native sender reaches the socket');
  t.equal(sdNotify('X=1', path.join(dir, 'missing.sock')), 'ENOENT', 'a missing socket is an errno, not a crash');
  t.equal(sdNotify('X=1', undefined), false, 'without NOTIFY_SOCKET nothing is sent');
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  // Big enough that the backup outlasts STATUS's once-a-second pace.
  for (let i = 0; i < 24; i++) fs.writeFileSync(path.join(src, `f${i}`), pseudoRandom(`n${i}`, 16 << 20));
  const app = await startAppliance(t, { dataDir: path.join(dir, 'data'), env: { NOTIFY_SOCKET: sock, WATCHDOG_USEC: '1000000' } });
  const fromEngine = () => l.messages().filter((m) => m.pid === app.engine.pid);
  await eventually('READY=1', () => fromEngine().some((m) => m.text.split('\n').includes('READY=1')));
  t.pass('READY=1 arrived, sent by the engine\'s own pid');
  t.ok(fromEngine().some((m) => m.text.includes(`MAINPID=${app.engine.pid}`)), 'with MAINPID');
  await eventually('WATCHDOG=1', () => fromEngine().filter((m) => m.text === 'WATCHDOG=1').length >= 2, 10_000);
  t.pass('WATCHDOG=1 arrives every half WATCHDOG_USEC while healthy');
  await app.local.call('POST', '/v1/sources', { name: 'n', kind: 'local', paths: [src] });
  const { job } = await app.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'backup', subject: 'n' });
  await waitJob(app.local, job.id);
  await eventually('STATUS with the job', () => fromEngine().some((m) => /^STATUS=backup n/.test(m.text)));
  await eventually('STATUS=idle after it', () => fromEngine().at(-1)?.text === 'STATUS=idle' || fromEngine().some((m, i, a) => m.text === 'STATUS=idle' && a.slice(0, i).some((x) => /^STATUS=backup/.test(x.text))));
  t.pass('STATUS told the job\'s progress, then idle');
  t.ok(fromEngine().some((m) => /^STATUS=backup n backing up/.test(m.text)), 'with its phase');
  const consoleReady = l.messages().filter((m) => m.pid === app.console.pid && m.text.startsWith('READY=1'));
  t.equal(consoleReady.length, 1, 'the console sent READY=1 from its own pid too');
  process.kill(app.engine.pid, 'SIGTERM');
  await app.engine.exited;
  t.ok(fromEngine().some((m) => m.text === 'STOPPING=1'), 'STOPPING=1 on SIGTERM');
});
