// The engine's scheduling, retention and resumption: schedules fire from an
// injected clock (hourly, daily, a missed run once after downtime),
// retention keeps exactly what its policy says (and what an admin
// protected), and a backup interrupted by killing the engine resumes after
// a restart and completes without storing again what it had stored.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import pino from 'pino';
import t, { type Test } from 'tap';

import { Engine, ManualClock } from '../appliance/engine/index.ts';
import { listSnapshots } from '../appliance/snapshot/index.ts';
import { type Appliance, startAppliance, waitJob } from './helpers/appliance.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, pseudoRandom } from './helpers/tree.ts';

const quiet = pino({ level: 'silent' });

/** Local time, as cron reads it. */
const at = (y: number, mo: number, d: number, h: number, mi: number, s = 0) => new Date(y, mo - 1, d, h, mi, s).getTime();

async function idle(engine: Engine): Promise<void> {
  for (;;) {
    const pending = await engine.state.jobs({ states: ['queued', 'running'] });
    if (pending.length === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('schedules fire from the clock: hourly, daily, and a missed run once after downtime; retention keeps exactly the policy', async (t) => {
  const dir = tmpDir(t);
  for (const s of ['a', 'b']) {
    fs.mkdirSync(path.join(dir, s), { recursive: true });
    fs.writeFileSync(path.join(dir, s, 'file.txt'), `source ${s}\n`);
  }
  const clock = new ManualClock(at(2026, 6, 1, 10, 10));
  const engine = await Engine.open({ dataDir: path.join(dir, 'data'), clock, log: quiet, schedule: false });
  t.teardown(() => engine.stop());
  await engine.start();
  const now = () => new Date(clock.now()).toISOString();
  await engine.state.putSource('hourly', { kind: 'local', paths: [path.join(dir, 'a')] }, {}, now());
  await engine.state.putSource('nightly', { kind: 'local', paths: [path.join(dir, 'b')] }, {}, now());
  await engine.state.addSchedule({ job: 'backup', subject: 'hourly', cron: '0 * * * *', enabled: true, lastFire: null });
  await engine.state.addSchedule({ job: 'backup', subject: 'nightly', cron: '30 2 * * *', enabled: true, lastFire: null });

  const fired: string[] = [];
  const tickAt = async (when: number) => {
    clock.set(when);
    for (const s of await engine.scheduler.tick()) fired.push(`${new Date(when).toTimeString().slice(0, 5)} ${s.subject}`);
    await idle(engine);
  };
  await tickAt(at(2026, 6, 1, 10, 10));
  t.same(fired, [], 'a new schedule does not fire for the past');
  await tickAt(at(2026, 6, 1, 10, 59, 59));
  t.same(fired, [], 'nothing before the hour');
  await tickAt(at(2026, 6, 1, 11, 0, 30));
  t.same(fired, ['11:00 hourly'], 'the hourly schedule fires on the hour');
  await tickAt(at(2026, 6, 1, 11, 30));
  t.same(fired, ['11:00 hourly'], 'and not again within the hour');
  // hour by hour through the night and the next morning
  for (let h = 12; h <= 38; h++) await tickAt(at(2026, 6, 1, h, 0, 30));
  const day2 = fired.filter((f) => f.endsWith('nightly'));
  t.same(day2, ['03:00 nightly'], 'the daily 02:30 schedule fired once, at the first tick after 02:30');
  t.equal(fired.filter((f) => f.endsWith('hourly')).length, 28, 'the hourly one fired every hour, 11:00 to 14:00 the next day');
  // The engine is down from 14:00 to 18:20: three hourly runs missed, one made up.
  const before = fired.length;
  await tickAt(at(2026, 6, 2, 18, 20));
  t.same(fired.slice(before), ['18:20 hourly'], 'after downtime, a missed schedule fires once, not once per missed hour');
  const jobs = await engine.state.jobs({ kind: 'backup', limit: 1000 });
  t.ok(jobs.every((j) => j.state === 'done' && j.requestedBy === 'schedule'), `${jobs.length} scheduled backups, all done`);

  // Retention: per source, the newest 2, the newest of each of the last 6 hours
  // and 3 days; plus a protected one. Snapshot times are the engine's clock's.
  const { snapshots } = await listSnapshots(engine.repo);
  const hourly = snapshots.filter((s) => s.snapshot.tags.includes('source:hourly'));
  t.equal(hourly.length, 29);
  const byTime = new Map(hourly.map((s) => [Date.parse(s.snapshot.time), s.id]));
  const protect = byTime.get(at(2026, 6, 1, 15, 0, 30))!;
  await engine.state.setProtected(protect, true, 'admin', now());
  await engine.state.setRetention({ last: 2, hourly: 6, daily: 3 });
  const prune = await engine.runner.request('prune', null, 'test');
  await idle(engine);
  t.equal((await engine.state.job(prune.job.id))!.state, 'done');
  const kept = (await listSnapshots(engine.repo)).snapshots;
  const keptHourly = kept.filter((s) => s.snapshot.tags.includes('source:hourly')).map((s) => Date.parse(s.snapshot.time)).sort();
  const expected = [
    at(2026, 6, 1, 15, 0, 30), // protected
    at(2026, 6, 1, 23, 0, 30), // daily: the newest of June 1
    at(2026, 6, 2, 10, 0, 30), at(2026, 6, 2, 11, 0, 30), at(2026, 6, 2, 12, 0, 30), at(2026, 6, 2, 13, 0, 30), // hourly
    at(2026, 6, 2, 14, 0, 30), at(2026, 6, 2, 18, 20), // last 2 (and hourly, daily)
  ];
  t.same(keptHourly.map((x) => new Date(x).toString()), expected.map((x) => new Date(x).toString()), 'exactly the snapshots the policy keeps, and the protected one');
  t.equal(kept.filter((s) => s.snapshot.tags.includes('source:nightly')).length, 1, 'the other source\'s single snapshot is kept (its own group)');
  t.equal((await engine.state.job(prune.job.id))!.result!.forgotten, 21, '21 forgotten');
});

/**
 * An appliance backing up `files` incompressible 12 MiB files from source
 * "big"; resolves once the backup has stored more than `stored` bytes
 * (progress is live from the API), so that it can be cut short.
 */
async function backupUnderway(t: Test, files: number, stored: number): Promise<{ app: Appliance; src: string; total: number; job: { id: number } }> {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  let total = 0;
  for (let i = 0; i < files; i++) {
    const b = pseudoRandom(`big ${i}`, 12 << 20);
    fs.writeFileSync(path.join(src, `f${String(i).padStart(2, '0')}.bin`), b);
    total += b.length;
  }
  const app = await startAppliance(t, { dataDir: path.join(dir, 'data') });
  await app.local.call('POST', '/v1/sources', { name: 'big', kind: 'local', paths: [src] });
  const { job } = await app.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'backup', subject: 'big' });
  for (;;) {
    const r = await app.local.call<{ job: { state: string; progress: { bytesAdded?: number } | null } }>('GET', `/v1/jobs/${job.id}`);
    if (r.job.state !== 'queued' && r.job.state !== 'running') t.fail(`the job ended (${r.job.state}) before it could be interrupted`);
    if ((r.job.progress?.bytesAdded ?? 0) > stored) return { app, src, total, job };
    await new Promise((res) => setTimeout(res, 50));
  }
}

t.test('a backup interrupted by killing the engine resumes after the restart and completes, storing nothing twice', async (t) => {
  const { app, src, total, job } = await backupUnderway(t, 24, 100 << 20);
  await app.killEngine();
  const packsAtKill = fs.readdirSync(path.join(app.dataDir, 'repository', 'data')).flatMap((d) => fs.readdirSync(path.join(app.dataDir, 'repository', 'data', d)));
  t.ok(packsAtKill.length > 0, `${packsAtKill.length} packs were on disk when the engine died`);
  await app.startEngine();
  const done = await waitJob(app.local, job.id);
  t.equal(done.state, 'done', `the same job completed after the restart${done.error ? ` (${JSON.stringify(done.error)})` : ''}`);
  t.equal(done.attempts, 2, 'in a second attempt');
  t.ok(done.result.adoptedPacks > 0, `it took in the ${done.result.adoptedPacks} pack(s) the first attempt wrote`);
  t.ok(done.result.bytesAdded < total * 0.8, `and added ${done.result.bytesAdded} bytes of ${total}: what was stored was not stored again`);
  const { snapshots } = await app.local.call<{ snapshots: { id: string }[] }>('GET', '/v1/snapshots');
  t.equal(snapshots.length, 1, 'one snapshot, no partial one');
  const r = await app.local.call<{ job: { id: number } }>('POST', '/v1/restores', { snapshot: 'latest', paths: [src] });
  const restored = await waitJob(app.local, r.job.id);
  t.equal(restored.state, 'done');
  t.same(compareTrees(src, path.join(restored.result.target, src)), [], 'the snapshot restores identical');
  const digest = (p: string) => createHash('sha256').update(fs.readFileSync(p)).digest('hex');
  t.equal(digest(path.join(restored.result.target, src, 'f23.bin')), digest(path.join(src, 'f23.bin')));
  const verify = await app.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'verify' });
  t.equal((await waitJob(app.local, verify.job.id)).state, 'done', 'verify finds no damage');
});

t.test('a job worker killed mid-backup: the job fails with HF_WORKER_FAILED, the engine keeps serving, the next backup adopts what was stored', async (t) => {
  const { app, total, job } = await backupUnderway(t, 16, 60 << 20);
  const workers = fs.readdirSync(path.join(app.dataDir, 'workers'));
  t.equal(workers.length, 1, 'one worker runs the backup, its pid recorded');
  const pid = Number(workers[0]);
  t.not(pid, app.engine.pid, 'in a process of its own');
  t.match(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /_job-worker/);
  t.equal(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[16], '10', 'at nice 10');
  process.kill(pid, 'SIGKILL'); // as the OOM killer would
  const failed = await waitJob(app.local, job.id);
  t.equal(failed.state, 'failed');
  t.equal(failed.error.code, 'HF_WORKER_FAILED', `a coded error: ${failed.error.message}`);
  t.match(failed.error.message, /run the job again/, 'that says what to do');
  t.ok(app.engine.alive(), 'the engine is still running');
  t.same(fs.readdirSync(path.join(app.dataDir, 'workers')), [], 'the worker\'s pid file is gone');
  const again = await app.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'backup', subject: 'big' });
  const done = await waitJob(app.local, again.job.id);
  t.equal(done.state, 'done', `the next backup completes${done.error ? ` (${JSON.stringify(done.error)})` : ''}`);
  t.ok(done.result.adoptedPacks > 0, `taking in the ${done.result.adoptedPacks} pack(s) the killed worker wrote`);
  t.ok(done.result.bytesAdded < total * 0.8, `adding ${done.result.bytesAdded} of ${total} bytes`);
  const verify = await app.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'verify' });
  t.equal((await waitJob(app.local, verify.job.id)).state, 'done', 'verify finds no damage');
});
