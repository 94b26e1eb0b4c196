// Self-update end to end, with real release bundles (the application and
// the pinned Node runtime, built by update-channel/bundle), the real fleet
// service, TUF, and the release's own engine started under a supervisor
// that takes READY from sd_notify: v1 → v2 (the download cut half-way and
// resumed; the install held back until a running backup ends), then a v3
// whose engine never becomes READY, rolled back to v2 and reported failed.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import { EngineClient } from '../appliance/console/engine-client.ts';
import { dataFiles } from '../appliance/engine/index.ts';
import { buildBundle } from '../update-channel/bundle/release-bundle.ts';
import { ROOT } from './helpers/cli.ts';
import { startAgent, startChannel } from './helpers/fleet.ts';
import { ReleaseSupervisor } from './helpers/release-supervisor.ts';
import { CountingProxy } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';
import { pseudoRandom } from './helpers/tree.ts';
import { waitJob } from './helpers/appliance.ts';

/** Replaces a staged file (staged files are hard links into the checkout: never edit them in place). */
async function replaceIn(stage: string, rel: string, from: string, to: string): Promise<void> {
  const file = path.join(stage, rel);
  const text = await fsp.readFile(file, 'utf8');
  if (!text.includes(from)) throw new Error(`${rel} does not contain the text to patch`);
  await fsp.writeFile(`${file}.new`, text.replace(from, to));
  await fsp.rename(`${file}.new`, file);
}

t.test('publishing v2 moves a box from v1 to v2; a broken v3 is rolled back to v2 and reported failed', async (t) => {
  const dir = tmpDir(t, 'hf-update-');
  const ch = await startChannel(t);
  const bundles = path.join(dir, 'bundles');
  fs.mkdirSync(bundles);
  const build = (version: string, patch?: (stage: string) => Promise<void>) =>
    buildBundle({ appRoot: ROOT, out: path.join(bundles, `holdfast-${version}.tar.gz`), version, level: 1, sourceDateEpoch: 1_700_000_000, ...(patch ? { patch } : {}) });
  const v1 = await build('1.0.0');
  const v2 = await build('2.0.0');
  const v3 = await build('3.0.0', (stage) => replaceIn(stage, 'appliance/engine/notifier.ts',
    '  ready(healthy: () => Promise<boolean>): void {\n', '  ready(healthy: () => Promise<boolean>): void {\n    if (healthy) return; // 3.0.0: the engine never reports READY\n'));
  t.ok(v1.size > 20e6, `a bundle carries the runtime (${(v1.size / 1e6).toFixed(0)} MB, ${v1.entries} entries)`);

  // The box: v1 installed, its engine running from it; the agent reaches the fleet through a cable we can pull.
  const proxy = new CountingProxy(ch.port);
  await proxy.listen();
  t.teardown(() => proxy.close());
  const box = path.join(dir, 'box');
  const engineData = path.join(box, 'engine');
  const root = path.join(box, 'opt');
  const supervisor = new ReleaseSupervisor(t, { root, dataDir: engineData, dir: box });
  await supervisor.ready;
  const provisioning = await ch.provisioning({ fleetUrl: `https://127.0.0.1:${proxy.port}` });
  const { installRelease, switchRelease } = await import('../appliance/agent/index.ts');
  await installRelease(root, v1.file, '1.0.0');
  await switchRelease(root, '1.0.0');
  await supervisor.restart(60_000);
  const socket = dataFiles(engineData).socket;
  const engine = new EngineClient(socket, `Local ${(await fsp.readFile(dataFiles(engineData).localToken, 'utf8')).trim()}`);
  t.teardown(() => engine.dispatcher.close());
  const { agent } = await startAgent(t, {
    provisioning, bundle: v1.file, version: '1.0.0', engine, services: supervisor, healthTimeoutMs: 20_000,
    selfTestArgs: ['--engine-socket', socket], dir: box,
  });
  t.equal(await agent.version(), '1.0.0', 'the box runs 1.0.0');

  // A backup that runs for a while.
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  for (let i = 0; i < 12; i++) fs.writeFileSync(path.join(src, `f${i}`), pseudoRandom(`u${i}`, 64 << 20));
  await engine.call('POST', '/v1/sources', { name: 'fs1', kind: 'local', paths: [src] });

  await ch.publish(v2.file, '2.0.0', { percent: 100 });
  // 1. The download is cut half-way: the update fails, the part stays.
  proxy.cutOnceAfter(Math.floor(v2.size / 2));
  const beat1 = await agent.heartbeat();
  t.same(beat1.update, { channel: 'stable', version: '2.0.0' }, 'the heartbeat answer offers 2.0.0');
  await t.rejects(agent.lastUpdate!, { code: 'HF_FLEET_UNREACHABLE' }, 'the cut download fails with a coded error');
  t.equal(proxy.cuts, 1, 'the cable was pulled once');
  const part = path.join(box, 'agent', 'downloads', 'holdfast-2.0.0.tar.gz.part');
  const partSize = fs.statSync(part).size;
  t.ok(partSize > 0 && partSize < v2.size, `a partial download stays (${partSize} of ${v2.size} bytes)`);
  t.equal(await agent.version(), '1.0.0', 'still on 1.0.0');

  // 2. A backup is running: the download resumes, but the install waits for the job.
  const { job } = await engine.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'backup', subject: 'fs1' });
  await new Promise((r) => setTimeout(r, 300));
  proxy.reset();
  await agent.heartbeat();
  const waiting = await agent.lastUpdate!;
  t.equal(waiting.state, 'waiting', 'the update waits');
  t.match((waiting as { reason: string }).reason, /running jobs.*backup fs1/, 'for the running backup');
  t.ok(proxy.toClient < v2.size - partSize / 2, `the download resumed where it stopped (${proxy.toClient} bytes on the wire for the rest of ${v2.size})`);
  t.equal(await agent.version(), '1.0.0', 'nothing installed while the job runs');
  const report = await agent.report();
  t.match(report.updateWaiting, /waits for running jobs/, 'the heartbeat tells the fleet why the update waits');
  const done = await waitJob(engine, job.id);
  t.equal(done.state, 'done', 'the backup finished undisturbed');

  // 3. The job is over: the next heartbeat installs 2.0.0.
  const engineV1 = supervisor.engine!.pid;
  await agent.heartbeat();
  const installed = await agent.lastUpdate!;
  t.same(installed, { state: 'installed', from: '1.0.0', to: '2.0.0' }, '2.0.0 installed');
  t.equal(await agent.version(), '2.0.0', 'current points at 2.0.0');
  t.equal(fs.readlinkSync(path.join(root, 'current')), path.join('releases', '2.0.0'), 'switched by the symlink');
  t.not(supervisor.engine!.pid, engineV1, 'the engine was restarted');
  t.match(supervisor.starts.at(-1), { release: '2.0.0', ready: true }, 'on 2.0.0, and it reported READY');
  t.equal(supervisor.agentRestarts, 1, 'the agent restarts itself onto the new release');
  const snaps = await engine.call<{ snapshots: unknown[] }>('GET', '/v1/snapshots');
  t.equal(snaps.snapshots.length, 1, 'the 2.0.0 engine has the backup made under 1.0.0');
  t.ok(fs.existsSync(path.join(root, 'releases', '1.0.0')), 'the previous release stays for a rollback');
  await agent.heartbeat();
  const rel2 = await ch.vendor<{ releases: { version: string; reports: { outcome: string }[] }[] }>('GET', '/v1/fleet/releases');
  t.match(rel2.body.releases.find((r) => r.version === '2.0.0')?.reports, [{ outcome: 'installed' }], 'the fleet has the box\'s report');
  const fleet = await ch.vendor<{ boxes: { version: string }[] }>('GET', '/v1/fleet/boxes');
  t.equal(fleet.body.boxes[0]!.version, '2.0.0', 'the fleet view shows 2.0.0');

  // 4. A broken 3.0.0: its engine never reports READY.
  await ch.publish(v3.file, '3.0.0', { percent: 100 });
  await agent.heartbeat();
  const rolled = await agent.lastUpdate!;
  t.match(rolled, { state: 'rolled-back', from: '2.0.0', to: '3.0.0', reason: /did not report READY within 20 s/ }, '3.0.0 rolled back to 2.0.0');
  t.equal(await agent.version(), '2.0.0', 'current points at 2.0.0 again');
  t.match(supervisor.starts.slice(-2), [{ release: '3.0.0', ready: false }, { release: '2.0.0', ready: true }], 'the 3.0.0 engine never got READY; the 2.0.0 one did');
  t.match(await engine.call('GET', '/v1/status'), { program: /holdfast/ }, 'the engine answers');
  t.ok(agent.state.failedVersions.includes('3.0.0'), 'the box will not try 3.0.0 again');
  const rel3 = await ch.vendor<{ releases: { version: string; halted: number | null; reports: { outcome: string; detail: string }[] }[] }>('GET', '/v1/fleet/releases');
  const r3 = rel3.body.releases.find((r) => r.version === '3.0.0')!;
  t.match(r3.reports, [{ outcome: 'failed', detail: /READY.*rolled back to 2\.0\.0/ }], 'reported failed, with why');
  t.ok(r3.halted, 'and the failure halted the rollout of 3.0.0');
  const again = await agent.heartbeat();
  t.equal(again.update, null, 'a halted release is offered no more');
});
