// The console's and the engine's access rules, against the real processes:
// no route answers without a session, roles hold, cross-site changes are
// refused, repeated wrong passwords lock an account, and no path with ".."
// reaches anything. Plus the lockout's expiry on an injected clock.
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { Accounts, LOCKOUT_MS } from '../appliance/engine/accounts.ts';
import { ManualClock, apiRoutes } from '../appliance/engine/index.ts';
import { ApplianceKey } from '../appliance/engine/secrets.ts';
import { StateStore } from '../appliance/engine/state-store.ts';
import { EngineClient } from '../appliance/console/index.ts';
import { ConsoleClient, startAppliance, waitJob } from './helpers/appliance.ts';
import { cli } from './helpers/cli.ts';
import { startSshd } from './helpers/sshd.ts';
import { tmpDir } from './helpers/tmp.ts';

const ADMIN = { user: 'admin', password: 'correct horse battery staple' };

/** A concrete URL for a route pattern (its parameters filled in). */
const concrete = (url: string) => url.replace(':id', '1').replace(':name', 'x');

t.test('access rules, over the real console and engine', async (t) => {
  const dir = tmpDir(t);
  const data = path.join(dir, 'data');
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'folder'), { recursive: true });
  fs.writeFileSync(path.join(src, 'folder', 'a.txt'), 'alpha\n');
  const app = await startAppliance(t, { dataDir: data });
  const anon = new ConsoleClient(app);
  t.teardown(() => anon.close());

  // Before setup, only status and setup answer.
  t.equal((await anon.request('GET', '/api/v1/status')).json.setupNeeded, true, 'a fresh appliance asks for setup');
  t.equal((await anon.request('POST', '/api/v1/setup', { user: 'admin', password: 'short' })).json.error.code, 'HF_INVALID_ARGUMENT', 'a short password is refused');
  const setup = await anon.request('POST', '/api/v1/setup', ADMIN);
  t.equal(setup.status, 200);
  t.match(setup.json.recoveryKey, /^[0-9A-Z]{5}(-[0-9A-Z]{5}){10}$/, 'setup shows the recovery key');
  t.equal((await anon.request('POST', '/api/v1/setup', ADMIN)).json.error.code, 'HF_SETUP_DONE', 'setup works once');

  const routes = apiRoutes();
  t.ok(routes.length >= 40, `${routes.length} routes`);
  const engineAnon = new EngineClient(app.socket);
  t.teardown(() => engineAnon.close());
  const refused: string[] = [];
  for (const r of routes.filter((x) => x.permission !== null)) {
    const viaConsole = await anon.request(r.method, `/api${concrete(r.url)}`, r.method === 'GET' ? undefined : {});
    const direct = await engineAnon.raw(r.method, concrete(r.url), r.method === 'GET' ? {} : { 'content-type': 'application/json' }, r.method === 'GET' ? null : '{}');
    await direct.body.text();
    if (viaConsole.status === 401 && viaConsole.json?.error?.code === 'HF_UNAUTHENTICATED' && direct.statusCode === 401) refused.push(`${r.method} ${r.url}`);
    else t.fail(`${r.method} ${r.url} answered ${viaConsole.status} (console) / ${direct.statusCode} (engine) without a session`);
  }
  t.equal(refused.length, routes.filter((x) => x.permission !== null).length, `all ${refused.length} routes refuse a request without a session, at the console and at the engine`);
  t.equal((await anon.request('GET', '/api/v1/no-such-route')).status, 401, 'an unknown route says 401 too, not what exists');
  const forged = await engineAnon.raw('GET', '/v1/dashboard', { authorization: 'Local not-the-token' });
  await forged.body.text();
  t.equal(forged.statusCode, 401, 'a wrong local token is refused');

  // The admin sets up a source, a viewer and an operator.
  const admin = new ConsoleClient(app);
  t.teardown(() => admin.close());
  t.equal((await admin.login(ADMIN.user, ADMIN.password)).status, 200);
  t.notMatch(JSON.stringify((await admin.request('GET', '/api/v1/session')).json), /token/, 'the session token stays in the cookie, the page never sees it');
  t.match(admin.cookie, /^hf_session=/);
  t.equal((await admin.request('POST', '/api/v1/sources', { name: 'files', kind: 'local', paths: [src] })).status, 200);
  for (const [user, role] of [['vera', 'viewer'], ['otto', 'operator']]) {
    t.equal((await admin.request('POST', '/api/v1/users', { user, password: `${user} password 123`, role })).status, 200, `${role} added`);
  }
  const run = await admin.request('POST', '/api/v1/jobs', { kind: 'backup', subject: 'files' });
  t.equal((await waitJob(app.local, run.json.job.id)).state, 'done', 'a backup to restore from');

  // A viewer reads, and may not restore, download or change anything.
  const viewer = new ConsoleClient(app);
  t.teardown(() => viewer.close());
  await viewer.login('vera', 'vera password 123');
  t.equal((await viewer.request('GET', '/api/v1/dashboard')).status, 200, 'a viewer sees the dashboard');
  const denied = async (what: string, method: string, p: string, body?: unknown) => {
    const a = await viewer.request(method, p, body);
    t.same([a.status, a.json?.error?.code], [403, 'HF_FORBIDDEN'], `a viewer may not ${what}`);
  };
  await denied('start a restore', 'POST', '/api/v1/restores', { snapshot: 'latest', paths: [path.join(src, 'folder')] });
  await denied('download a file', 'GET', `/api/v1/snapshots/latest/file?path=${encodeURIComponent(path.join(src, 'folder', 'a.txt'))}`);
  await denied('change the retention policy', 'PUT', '/api/v1/retention', { policy: { daily: 7 } });
  await denied('add a source', 'POST', '/api/v1/sources', { name: 'x', kind: 'local', paths: ['/tmp'] });
  await denied('run a backup', 'POST', '/api/v1/jobs', { kind: 'backup', subject: 'files' });
  await denied('list users', 'GET', '/api/v1/users');
  await denied('take the update lock', 'POST', '/api/v1/update-lock', {});
  const operator = new ConsoleClient(app);
  t.teardown(() => operator.close());
  await operator.login('otto', 'otto password 123');
  t.equal((await operator.request('POST', '/api/v1/restores', { snapshot: 'latest', paths: [path.join(src, 'folder')] })).status, 200, 'an operator may restore');
  t.same((await operator.request('PUT', '/api/v1/retention', { policy: { daily: 7 } })).json.error.code, 'HF_FORBIDDEN', 'but not change settings');
  t.same((await operator.request('POST', '/api/v1/jobs', { kind: 'prune' })).json.error.code, 'HF_FORBIDDEN', 'nor prune');

  // Cross-site requests: without the CSRF token, or from another origin.
  const noToken = await admin.request('POST', '/api/v1/sources', { name: 'evil', kind: 'local', paths: ['/'] }, { csrf: false });
  t.same([noToken.status, noToken.json.error.code], [403, 'HF_CSRF'], 'a change without the CSRF token is refused');
  const wrongToken = await admin.request('DELETE', '/api/v1/sources/files', undefined, { csrf: 'x'.repeat(32) });
  t.same([wrongToken.status, wrongToken.json.error.code], [403, 'HF_CSRF'], 'a wrong CSRF token is refused');
  const otherSite = await admin.request('POST', '/api/v1/sources', { name: 'evil', kind: 'local', paths: ['/'] }, { origin: 'https://evil.example' });
  t.same([otherSite.status, otherSite.json.error.code], [403, 'HF_CSRF'], 'a request from another origin is refused, token or not');
  const fetchSite = await admin.request('POST', '/api/v1/jobs', { kind: 'verify' }, { headers: { 'sec-fetch-site': 'cross-site' } });
  t.equal(fetchSite.status, 403, 'Sec-Fetch-Site: cross-site is refused');
  t.equal((await admin.request('GET', '/api/v1/sources')).json.sources.length, 1, 'nothing was added or removed');
  const audit = (await admin.request('GET', '/api/v1/audit')).json.entries as { action: string; user: string }[];
  t.ok(audit.some((e) => e.action === 'restore' && e.user === 'otto'), 'the audit log has the operator\'s restore');
  t.ok(audit.some((e) => e.action === 'source.add' && e.user === 'admin'), 'and the admin\'s change');

  // Paths with "..": refused before anything is read.
  for (const p of ['/../../etc/passwd', `${src}/../../etc/passwd`, '/%2e%2e/etc/shadow', `${src}/folder/..`]) {
    for (const kind of ['file', 'zip']) {
      const a = await admin.request('GET', `/api/v1/snapshots/latest/${kind}?path=${p.includes('%') ? p : encodeURIComponent(p)}`);
      t.same([a.status, a.json?.error?.code], [400, 'HF_INVALID_ARGUMENT'], `${kind} ${p}: refused`);
    }
  }
  const restoreOut = await admin.request('POST', '/api/v1/restores', { snapshot: 'latest', paths: [path.join(src, 'folder')], target: '/etc' });
  t.same([restoreOut.status, restoreOut.json.error.code], [400, 'HF_INVALID_ARGUMENT'], 'a restore target outside the restore areas is refused');
  const restoreUp = await admin.request('POST', '/api/v1/restores', { snapshot: 'latest', paths: ['/tmp/../etc'] });
  t.equal(restoreUp.status, 400, 'a restore path with ".." is refused');

  // Lockout: the 6th wrong password within a minute locks the account, the right one then too.
  const attacker = new ConsoleClient(app);
  t.teardown(() => attacker.close());
  for (let i = 1; i <= 5; i++) {
    const a = await attacker.login('vera', `wrong ${i}`);
    t.same([a.status, a.json.error.code], [401, 'HF_WRONG_CREDENTIALS'], `wrong password ${i}: refused`);
  }
  const sixth = await attacker.login('vera', 'wrong 6');
  t.same([sixth.status, sixth.json.error.code], [423, 'HF_ACCOUNT_LOCKED'], 'the 6th wrong password locks the account');
  const right = await attacker.login('vera', 'vera password 123');
  t.same([right.status, right.json.error.code], [423, 'HF_ACCOUNT_LOCKED'], 'while locked, the right password is refused too');
  t.ok((await admin.request('GET', '/api/v1/audit')).json.entries.some((e: { action: string }) => e.action === 'account.locked'), 'the lock is in the audit log');
  t.equal((await admin.request('GET', '/api/v1/dashboard')).status, 200, 'other accounts are not affected');
  const unknown = await attacker.login('nobody', 'whatever');
  t.same([unknown.status, unknown.json.error.code], [401, 'HF_WRONG_CREDENTIALS'], 'an unknown user gets the same answer as a wrong password');
  // The way back in from the box itself (root, the local token): a new password ends the lockout.
  const reset = await cli(['user', 'passwd', 'vera', '--data-dir', data, '--json'], { HOLDFAST_NEW_PASSWORD: 'vera new password 456' });
  t.equal(reset.code, 0, `holdfast user passwd ${reset.stderr.trim()}`);
  t.same(reset.json, { user: 'vera', changed: true });
  t.equal((await attacker.login('vera', 'vera new password 456')).status, 200, 'the new password logs in at once, lock or not');
  const listed = await cli(['user', 'list', '--data-dir', data, '--json']);
  t.same(listed.json.users.map((u: { name: string; role: string }) => `${u.name}:${u.role}`).sort(), ['admin:admin', 'otto:operator', 'vera:viewer'], 'holdfast user list');
  const noLocalToken = await cli(['user', 'list', '--data-dir', path.join(dir, 'elsewhere'), '--json']);
  t.equal(noLocalToken.json.error.code, 'HF_ENGINE_UNAVAILABLE', 'without the local token: a coded error saying where it looked');

  // Logout ends the session at the engine, not only in the browser.
  const cookie = admin.cookie;
  t.equal((await admin.request('POST', '/api/v1/logout', {})).status, 200);
  admin.cookie = cookie;
  t.equal((await admin.request('GET', '/api/v1/dashboard')).status, 401, 'the old cookie no longer works after logout');
});

t.test('restore "back where it came from": in place for a local source, refused for a server\'s snapshot', async (t) => {
  const dir = tmpDir(t);
  fs.chmodSync(dir, 0o755); // the SSH user reads the source below
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'folder'), { recursive: true, mode: 0o755 });
  fs.writeFileSync(path.join(src, 'folder', 'a.txt'), 'alpha\n', { mode: 0o644 });
  const app = await startAppliance(t, { dataDir: path.join(dir, 'data') });
  const admin = new ConsoleClient(app);
  t.teardown(() => admin.close());
  t.equal((await admin.request('POST', '/api/v1/setup', ADMIN)).status, 200);
  await admin.login(ADMIN.user, ADMIN.password);

  t.equal((await admin.request('POST', '/api/v1/sources', { name: 'here', kind: 'local', paths: [src] })).status, 200);
  const b1 = await admin.request('POST', '/api/v1/jobs', { kind: 'backup', subject: 'here' });
  const local = (await waitJob(app.local, b1.json.job.id)).result.snapshot as string;
  fs.writeFileSync(path.join(src, 'folder', 'a.txt'), 'ransomware was here\n');
  const r = await admin.request('POST', '/api/v1/restores', { snapshot: local, paths: [path.join(src, 'folder')], target: 'original' });
  t.equal(r.status, 200, 'a local source\'s folder may go back where it came from');
  t.equal((await waitJob(app.local, r.json.job.id)).state, 'done');
  t.equal(fs.readFileSync(path.join(src, 'folder', 'a.txt'), 'utf8'), 'alpha\n', 'and is there again as it was');

  // The same paths backed up from a server over SFTP name places on that server, not on this box.
  const sshd = await startSshd(t);
  const sftp = await admin.request('POST', '/api/v1/sources', {
    name: 'server', url: `sftp://${sshd.user}@127.0.0.1:${sshd.port}${src}`,
    identityKey: fs.readFileSync(sshd.identityFile, 'utf8'), hostKey: sshd.hostKeyFingerprint,
  });
  t.equal(sftp.status, 200, `an SFTP source ${JSON.stringify(sftp.json?.error ?? '')}`);
  const b2 = await admin.request('POST', '/api/v1/jobs', { kind: 'backup', subject: 'server' });
  const done = await waitJob(app.local, b2.json.job.id);
  t.equal(done.state, 'done', `backed up over SFTP ${JSON.stringify(done.error ?? '')}`);
  fs.writeFileSync(path.join(src, 'folder', 'a.txt'), 'changed again\n');
  const refused = await admin.request('POST', '/api/v1/restores', { snapshot: done.result.snapshot, paths: [path.join(src, 'folder')], target: 'original' });
  t.same([refused.status, refused.json?.error?.code], [400, 'HF_INVALID_ARGUMENT'], 'restoring a server\'s snapshot onto this box\'s paths is refused');
  t.match(refused.json?.error?.message, /restore area/, 'and says what to do instead');
  t.equal(fs.readFileSync(path.join(src, 'folder', 'a.txt'), 'utf8'), 'changed again\n', 'nothing was written');
  const jobs = await app.local.call<{ jobs: { kind: string }[] }>('GET', '/v1/jobs?kind=restore');
  t.equal(jobs.jobs.length, 1, 'no restore job was queued for it');
});

t.test('lockout: failures older than a minute do not count; a lock ends after its time', async (t) => {
  const dir = tmpDir(t);
  const clock = new ManualClock(new Date('2026-06-01T10:00:00Z'));
  const state = await StateStore.open(path.join(dir, 'state.sqlite'), await ApplianceKey.load(path.join(dir, 'key')));
  t.teardown(() => state.close());
  const acc = new Accounts(state, clock);
  await acc.setup('admin', ADMIN.password);
  for (let i = 0; i < 5; i++) await t.rejects(acc.login('admin', 'nope', 'test'), { code: 'HF_WRONG_CREDENTIALS' });
  clock.advance(61_000);
  await t.rejects(acc.login('admin', 'nope', 'test'), { code: 'HF_WRONG_CREDENTIALS' }, 'five failures a minute ago and one now: not six in a minute');
  for (let i = 0; i < 4; i++) await t.rejects(acc.login('admin', 'nope', 'test'), { code: 'HF_WRONG_CREDENTIALS' });
  await t.rejects(acc.login('admin', 'nope', 'test'), { code: 'HF_ACCOUNT_LOCKED' }, 'six within a minute: locked');
  clock.advance(LOCKOUT_MS - 1000);
  await t.rejects(acc.login('admin', ADMIN.password, 'test'), { code: 'HF_ACCOUNT_LOCKED' }, 'still locked just before the end');
  clock.advance(2000);
  const ok = await acc.login('admin', ADMIN.password, 'test');
  t.equal(ok.actor.role, 'admin', 'the right password works once the lock is over');
  t.ok(await acc.session(ok.token), 'and gives a session');
  clock.advance(3_600_001);
  t.equal(await acc.session(ok.token), null, 'a session idle for an hour has ended');
});
