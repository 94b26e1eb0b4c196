// The fleet service on loopback, as its own process (`npm run channel --
// serve`), with real agents: enrollment with one-time tokens (reused,
// expired and unknown ones refused), heartbeats seen in the fleet view,
// commands acknowledged with their result, key rotation, and revocation
// answering 401 on every box route.
import fsp from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';
import { Agent as HttpAgent, request } from 'undici';

import { FleetClient, enrollBox, identityFiles, installRelease, saveState, switchRelease } from '../appliance/agent/index.ts';
import { lightRelease, startAgent, startChannel } from './helpers/fleet.ts';
import { cli } from './helpers/cli.ts';
import { tmpDir } from './helpers/tmp.ts';

t.test('enrollment: a one-time token gives a certificate for a key made on the box; reused, expired and unknown tokens are refused', async (t) => {
  const ch = await startChannel(t);
  const p = await ch.provisioning();
  const dir = tmpDir(t);
  const { identity, enrolledNow } = await enrollBox(path.join(dir, 'a'), p);
  t.ok(enrolledNow, 'enrolled');
  t.match(identity.name, /^box-[0-9a-f]{10}$/, 'the fleet named the box');
  t.match(identity.certPem, /BEGIN CERTIFICATE/, 'and certified it');
  const key = await fsp.stat(identityFiles(path.join(dir, 'a')).key);
  t.equal(key.mode & 0o777, 0o600, 'the key stays on the box, mode 0600');
  const again = await enrollBox(path.join(dir, 'a'), p);
  t.notOk(again.enrolledNow, 'a second start keeps the identity');
  t.equal(again.identity.certPem, identity.certPem, 'the same certificate');

  await t.rejects(enrollBox(path.join(dir, 'b'), p), { code: 'HF_ENROLL_TOKEN' }, 'the same token again is refused');
  await t.rejects(enrollBox(path.join(dir, 'c'), { ...p, token: 'hft_nosuchtoken0000000000000000' }), { code: 'HF_ENROLL_TOKEN' }, 'an unknown token is refused');
  const short = await ch.provisioning({ hours: 0.0005 }); // 1.8 s
  await new Promise((r) => setTimeout(r, 2500));
  await t.rejects(enrollBox(path.join(dir, 'd'), short), { code: 'HF_ENROLL_TOKEN' }, 'an expired token is refused');
  // A malformed CSR does not use up a good token.
  const good = await ch.provisioning();
  const raw = new HttpAgent({ connect: { ca: ch.ca } });
  t.teardown(() => raw.close());
  const bad = await request(`${ch.url}/v1/enroll`, { method: 'POST', dispatcher: raw, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: good.token, csr: 'not a csr' }) });
  t.equal(bad.statusCode, 400, 'a malformed CSR is a 400');
  t.equal(((await bad.body.json()) as { error: { code: string } }).error.code, 'HF_ENROLL_CSR');
  t.ok((await enrollBox(path.join(dir, 'e'), good)).enrolledNow, 'the token still enrolls a box afterwards');
  const { body } = await ch.vendor<{ boxes: { name: string }[] }>('GET', '/v1/fleet/boxes');
  t.equal(body.boxes.length, 2, 'two boxes enrolled, nothing else');
});

t.test('heartbeats show in the fleet view; commands run and are acknowledged; a revoked box gets 401 everywhere', async (t) => {
  const ch = await startChannel(t);
  const dir = tmpDir(t);
  const v1 = await lightRelease(dir, '1.0.0');
  const { agent } = await startAgent(t, { provisioning: await ch.provisioning(), bundle: v1, version: '1.0.0' });
  const name = agent.identity.name;
  const before = await ch.vendor<{ boxes: { name: string; lastHeartbeat: string | null }[] }>('GET', '/v1/fleet/boxes');
  t.equal(before.body.boxes[0]!.lastHeartbeat, null, 'no heartbeat yet');
  const beat = await agent.heartbeat();
  t.equal(beat.heartbeatSeconds, 300, 'the fleet tells the interval');
  const d1 = agent.nextDelayMs(300), d2 = agent.nextDelayMs(300);
  t.ok(d1 >= 240_000 && d1 <= 360_000 && d2 >= 240_000 && d2 <= 360_000, 'the next heartbeat is the interval ±20%');
  const view = await ch.vendor<{ boxes: { name: string; version: string; lastHeartbeat: string; health: { status: string }; channel: string }[] }>('GET', '/v1/fleet/boxes');
  t.match(view.body.boxes[0], { name, version: '1.0.0', channel: 'stable', health: { status: 'ok' } }, 'the fleet view shows the box, its version and health');
  t.ok(view.body.boxes[0]!.lastHeartbeat, 'and when it last spoke');
  t.equal((await ch.vendor('GET', '/v1/fleet/boxes', undefined)).status, 200);
  const noToken = await request(`${ch.url}/v1/fleet/boxes`, { dispatcher: new HttpAgent({ connect: { ca: ch.ca } }) });
  t.equal(noToken.statusCode, 401, 'the fleet API needs the vendor token');
  await noToken.body.dump();
  const page = await request(`${ch.url}/fleet`, { dispatcher: new HttpAgent({ connect: { ca: ch.ca } }) });
  t.match(await page.body.text(), /Holdfast fleet/, 'the fleet page is served');

  // Commands: a setting, and one the box cannot do (no engine here): both acknowledged with their result.
  const set = await ch.vendor<{ id: number }>('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'set', args: { key: 'maintenance-window', value: 'Sat-Sun 01:00-05:00' } });
  const job = await ch.vendor<{ id: number }>('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'run-job', args: { job: 'backup', subject: 'fs1' } });
  t.equal((await ch.vendor('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'format-disk', args: {} })).status, 400, 'an unknown command is refused at the fleet');
  t.equal((await agent.heartbeat()).commands, 2, 'the next heartbeat carries both commands');
  t.equal(agent.state.maintenanceWindow, 'Sat-Sun 01:00-05:00', 'the setting changed on the box');
  const detail = await ch.vendor<{ commands: { id: number; state: string; result: Record<string, unknown> }[] }>('GET', `/v1/fleet/boxes/${name}`);
  const byId = new Map(detail.body.commands.map((c) => [c.id, c]));
  t.match(byId.get(set.body.id), { state: 'done', result: { 'maintenance-window': 'Sat-Sun 01:00-05:00' } }, 'the setting is acknowledged done');
  t.match(byId.get(job.body.id), { state: 'failed', result: { error: { code: 'HF_ENGINE_UNAVAILABLE' } } }, 'the job command is acknowledged failed, with the reason');
  t.equal((await agent.heartbeat()).commands, 0, 'acknowledged commands are not sent again');

  // Key rotation: a new key; the old certificate stops working once the new one is used.
  const oldCert = agent.identity;
  await ch.vendor('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'rotate-key', args: {} });
  await agent.heartbeat();
  t.not(agent.identity.keyPem, oldCert.keyPem, 'the box made a new key');
  const old = new FleetClient(ch.url, { ca: ch.ca, cert: oldCert.certPem, key: oldCert.keyPem });
  t.teardown(() => old.close());
  await t.rejects(old.call('POST', '/v1/heartbeat', await agent.report()), { code: 'HF_FLEET_UNAUTHORIZED' }, 'the old certificate gets 401');
  await agent.heartbeat();
  t.pass('the new key heartbeats');

  // Revocation.
  const r = await ch.cli(['revoke', '--dir', ch.dir, name]);
  t.equal(r.code, 0, `revoked: ${r.stdout}`);
  for (const [method, p] of [['POST', '/v1/heartbeat'], ['GET', '/v1/escrow'], ['GET', '/tuf/metadata/timestamp.json'], ['GET', '/v1/whoami'], ['POST', '/v1/renew']] as const) {
    const res = await request(`${ch.url}${p}`, { method, dispatcher: agent.fleet.dispatcher, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, body: '{}' } : {}) });
    t.equal(res.statusCode, 401, `${method} ${p} answers a revoked box 401`);
    await res.body.dump();
  }
  await t.rejects(agent.heartbeat(), { code: 'HF_FLEET_UNAUTHORIZED' }, 'the agent sees HF_FLEET_UNAUTHORIZED');
  const crl = await fsp.readFile(path.join(ch.dir, 'ca', 'crl.pem'), 'utf8');
  t.match(crl, /BEGIN X509 CRL/, 'the CRL the stores get lists the revocation');
});

t.test('an update waits for the maintenance window (an upgrade command does not); a downgrade is refused', async (t) => {
  const ch = await startChannel(t);
  const dir = tmpDir(t);
  const v1 = await lightRelease(dir, '1.0.0');
  const v2 = await lightRelease(dir, '1.1.0');
  const { agent } = await startAgent(t, { provisioning: await ch.provisioning(), bundle: v1, version: '1.0.0' });
  const name = agent.identity.name;
  // A window that is not now: two hours from now, for an hour (local time).
  const h = (new Date().getHours() + 2) % 24;
  const window = `${String(h).padStart(2, '0')}:00-${String((h + 1) % 24).padStart(2, '0')}:00`;
  await ch.vendor('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'set', args: { key: 'maintenance-window', value: window } });
  await agent.heartbeat();
  await ch.publish(v2, '1.1.0', { percent: 100 });
  await agent.heartbeat();
  t.match(await agent.lastUpdate, { state: 'waiting', reason: /maintenance window/ }, 'outside the window the offered update waits');
  t.equal(await agent.version(), '1.0.0', 'nothing installed');
  t.match((await agent.report()).updateWaiting, /maintenance window/, 'and the heartbeat says so');
  const up = await ch.vendor<{ id: number }>('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'upgrade', args: { version: '1.1.0' } });
  await agent.heartbeat();
  t.equal(await agent.version(), '1.1.0', 'an upgrade command installs at once');
  const down = await ch.vendor<{ id: number }>('POST', `/v1/fleet/boxes/${name}/commands`, { kind: 'upgrade', args: { version: '1.0.0' } });
  await agent.heartbeat();
  t.equal(await agent.version(), '1.1.0', 'an upgrade to an older version does nothing');
  const detail = await ch.vendor<{ commands: { id: number; state: string; result: { error?: { code: string } } }[] }>('GET', `/v1/fleet/boxes/${name}`);
  const byId = new Map(detail.body.commands.map((c) => [c.id, c]));
  t.equal(byId.get(up.body.id)?.state, 'done', 'the upgrade is acknowledged done');
  t.match(byId.get(down.body.id), { state: 'failed', result: { error: { code: 'HF_UPDATE_DOWNGRADE' } } }, 'the downgrade is refused with HF_UPDATE_DOWNGRADE');
});

t.test('an agent that died between the switch and the health check finishes it at its next start: a failing release is rolled back and reported', async (t) => {
  const ch = await startChannel(t);
  const dir = tmpDir(t);
  const v1 = await lightRelease(dir, '1.0.0');
  const bad = await lightRelease(dir, '2.0.0', { broken: true });
  await ch.publish(bad, '2.0.0', { percent: 0 });
  const box = path.join(dir, 'box');
  const first = await startAgent(t, { provisioning: await ch.provisioning(), bundle: v1, version: '1.0.0', dir: box });
  // What the dead agent left: 2.0.0 unpacked, the update recorded, `current` switched, nothing checked yet.
  await installRelease(first.root, bad, '2.0.0');
  await saveState(first.dataDir, { ...first.agent.state, update: { channel: 'stable', from: '1.0.0', to: '2.0.0', phase: 'switched', at: new Date().toISOString() } });
  await switchRelease(first.root, '2.0.0');
  const second = await startAgent(t, { provisioning: await ch.provisioning(), bundle: v1, version: '1.0.0', dir: box });
  t.equal(second.agent.identity.name, first.agent.identity.name, 'the same box (no second enrollment)');
  t.equal(await second.agent.version(), '1.0.0', 'the unchecked release failed its health check and was rolled back');
  t.equal(second.agent.state.update, null, 'the update record is cleared');
  t.ok(second.agent.state.failedVersions.includes('2.0.0'), '2.0.0 is marked failed on the box');
  const rel = await ch.vendor<{ releases: { version: string; reports: { outcome: string; detail: string }[] }[] }>('GET', '/v1/fleet/releases');
  t.match(rel.body.releases.find((r) => r.version === '2.0.0')?.reports, [{ outcome: 'failed', detail: /broken runtime.*rolled back to 1\.0\.0/ }], 'and the failure is reported');
});

t.test('`holdfast agent --once` as a process: enrolls from the provisioning file, heartbeats, and keeps its identity on the next start', async (t) => {
  const ch = await startChannel(t);
  const dir = tmpDir(t);
  const root = path.join(dir, 'opt');
  await installRelease(root, await lightRelease(dir, '1.0.0'), '1.0.0');
  await switchRelease(root, '1.0.0');
  const p = await ch.provisioning();
  const file = path.join(dir, 'provisioning.json');
  await fsp.writeFile(file, JSON.stringify(p));
  const args = ['agent', '--once', '--data-dir', path.join(dir, 'agent'), '--install-root', root, '--provisioning', file, '--engine-token-file', path.join(dir, 'none')];
  const first = await cli(args);
  t.equal(first.code, 0, `the agent ran: ${first.stderr.slice(-300)}`);
  const name = JSON.parse(await fsp.readFile(path.join(dir, 'agent', 'identity.json'), 'utf8')).name as string;
  const view = await ch.vendor<{ boxes: { name: string; version: string; lastHeartbeat: string | null }[] }>('GET', '/v1/fleet/boxes');
  t.match(view.body.boxes, [{ name, version: '1.0.0' }], 'enrolled, and its heartbeat is in the fleet view');
  t.ok(view.body.boxes[0]!.lastHeartbeat, 'with its time');
  const second = await cli(args);
  t.equal(second.code, 0, 'a second start runs (the token is used up: it does not enroll again)');
  t.equal((await ch.vendor<{ boxes: unknown[] }>('GET', '/v1/fleet/boxes')).body.boxes.length, 1, 'still one box');
  await fsp.rm(path.join(dir, 'agent'), { recursive: true });
  const third = await cli(args);
  t.not(third.code, 0, 'with its identity gone, the used token cannot enroll it again');
  t.match(third.stderr, /HF_ENROLL_TOKEN/, 'HF_ENROLL_TOKEN says so');
});

t.test('a release unpacked under the agent\'s umask 0077 is still readable and executable by every service user', async (t) => {
  const dir = tmpDir(t);
  const root = path.join(dir, 'opt');
  const bundle = await lightRelease(dir, '1.0.0');
  const before = process.umask(0o077);
  try {
    await installRelease(root, bundle, '1.0.0');
  } finally {
    process.umask(before);
  }
  const bad: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const mode = (await fsp.lstat(p)).mode & 0o777;
      if (e.isDirectory()) {
        if ((mode & 0o005) !== 0o005) bad.push(`${path.relative(root, p)} ${mode.toString(8)}`);
        await walk(p);
      } else if (e.isFile() && (mode & 0o004) === 0) bad.push(`${path.relative(root, p)} ${mode.toString(8)}`);
    }
  };
  for (const d of [path.join(root, 'releases'), path.join(root, 'releases', '1.0.0')]) {
    const mode = (await fsp.stat(d)).mode & 0o777;
    if (mode !== 0o755) bad.push(`${path.relative(root, d)} ${mode.toString(8)}`);
  }
  await walk(path.join(root, 'releases', '1.0.0'));
  t.same(bad, [], 'every directory is r-x and every file r-- for others (a DynamicUser= console runs from it)');
});
