// A box lost to a fire, replaced: the first box (engine, console, agent)
// backs up and replicates to an offsite store that trusts the vendor CA,
// and its agent escrows the configuration to the fleet. Then it is gone.
// A second box enrolls with a replacement token (the first box's name, so
// the same tenant at the store; the first box's certificate is revoked),
// fetches the escrow, opens it with the customer's recovery key, clones the
// repository from the store, and restores a file byte-identical.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

import t from 'tap';

import { FleetClient } from '../appliance/agent/index.ts';
import { issueCertificate } from '../appliance/pki/index.ts';
import { channelFiles } from '../update-channel/server/channel-files.ts';
import { startAppliance, waitJob } from './helpers/appliance.ts';
import { cli } from './helpers/cli.ts';
import { lightRelease, startAgent, startChannel } from './helpers/fleet.ts';
import { startStore } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';
import { pseudoRandom } from './helpers/tree.ts';

t.test('a replacement box gets its configuration back from escrow with the recovery secret, clones the repository and restores a file', async (t) => {
  const dir = tmpDir(t, 'hf-replace-');
  const ch = await startChannel(t);
  // The vendor's offsite store: its certificate from the vendor CA, so boxes' fleet certificates are its tenants.
  const ca = channelFiles(ch.dir).ca;
  await issueCertificate(ca, { name: 'offsite', kind: 'store' });
  const pki = { dir: ca, ca: path.join(ca, 'ca.crt'), crl: path.join(ca, 'crl.pem'), cert: (n: string) => ({ cert: path.join(ca, `${n}.crt`), key: path.join(ca, `${n}.key`) }) };
  const store = await startStore(t, { dir: path.join(dir, 'store'), pki, store: 'offsite' });
  const release = await lightRelease(dir, '1.0.0');

  // ---- the first box ----
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'finance'), { recursive: true });
  const original = pseudoRandom('ledger', 3 << 20);
  fs.writeFileSync(path.join(src, 'finance', 'ledger.xlsx'), original);
  fs.writeFileSync(path.join(src, 'notes.txt'), 'keep me\n');
  const a = await startAppliance(t, { dataDir: path.join(dir, 'box-a', 'engine') });
  const setup = await a.local.call<{ recoveryKey: string }>('POST', '/v1/setup', { user: 'admin', password: 'correct horse battery' });
  const recoveryKey = setup.recoveryKey;
  t.match(recoveryKey, /\w/, 'setup showed the recovery key once (the customer files it)');
  const boxA = await startAgent(t, { provisioning: await ch.provisioning(), bundle: release, version: '1.0.0', engine: a.local, dir: path.join(dir, 'box-a') });
  const name = boxA.agent.identity.name;
  await a.local.call('POST', '/v1/sources', { name: 'fileserver', kind: 'local', paths: [src] });
  await a.local.call('POST', '/v1/schedules', { job: 'backup', subject: 'fileserver', cron: '0 2 * * *' });
  await a.local.call('POST', '/v1/targets', {
    name: 'vendor', endpoints: store.endpoint, ca: ch.ca, cert: boxA.agent.identity.certPem, key: boxA.agent.identity.keyPem,
  });
  const backup = await a.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'backup', subject: 'fileserver' });
  t.equal((await waitJob(a.local, backup.job.id)).state, 'done', 'backed up');
  const repl = await a.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'replicate', subject: 'vendor' });
  t.equal((await waitJob(a.local, repl.job.id)).state, 'done', 'replicated to the vendor\'s store as tenant ' + name);
  await boxA.agent.heartbeat();
  t.ok(boxA.agent.state.escrowSha256, 'the agent escrowed the configuration with its heartbeat');
  const escrowed = await boxA.agent.fleet.getBuffer('/v1/escrow');
  t.notOk(escrowed.includes(Buffer.from('correct horse')), 'the escrow does not hold a password in clear');
  const oldIdentity = boxA.agent.identity;

  // ---- the fire ----
  await a.killEngine();
  await fsp.rm(path.join(dir, 'box-a'), { recursive: true, force: true });

  // ---- the replacement ----
  const p = await ch.provisioning({ replaces: name });
  // The replacement boots: its engine starts empty (a repository and escrow key of its own) beside the agent.
  const engineB = path.join(dir, 'box-b', 'engine');
  const fresh = await startAppliance(t, { dataDir: engineB });
  const boxB = await startAgent(t, { provisioning: p, bundle: release, version: '1.0.0', engine: fresh.local, dir: path.join(dir, 'box-b') });
  t.equal(boxB.agent.identity.name, name, 'the replacement enrolled under the first box\'s name (its tenant at the store)');
  t.ok(boxB.agent.identity.replacement, 'as a replacement');
  await boxB.agent.heartbeat();
  const held = await boxB.agent.fleet.getWithHeaders('/v1/escrow');
  t.equal(held.headers['x-holdfast-escrow-version'], '1', 'before its restore, the replacement does not escrow its empty configuration over the lost box\'s');
  t.ok(held.body.equals(escrowed), 'the fleet still hands out the lost box\'s escrow');
  // Even if something had (an older agent): the restore finds the lost box's among the escrows the fleet keeps.
  const foreign = await fresh.local.raw('GET', '/v1/escrow', {});
  t.equal(foreign.statusCode, 200, 'the fresh engine can seal its own escrow');
  await boxB.agent.fleet.putBuffer('/v1/escrow', Buffer.from(await foreign.body.arrayBuffer()));
  t.equal((await boxB.agent.fleet.getWithHeaders('/v1/escrow')).headers['x-holdfast-escrow-version'], '2', 'a foreign escrow is now the newest');
  await fresh.killEngine();
  const old = new FleetClient(ch.url, { ca: ch.ca, cert: oldIdentity.certPem, key: oldIdentity.keyPem });
  t.teardown(() => old.close());
  await t.rejects(old.call('GET', '/v1/whoami'), { code: 'HF_FLEET_UNAUTHORIZED' }, 'the lost box\'s certificate is revoked');
  const keyFile = path.join(dir, 'recovery.key');
  fs.writeFileSync(keyFile, `${recoveryKey}\n`, { mode: 0o600 });
  const wrongKey = path.join(dir, 'wrong.key');
  const other = await cli(['init', '--repo', path.join(dir, 'other-repo')], { HOLDFAST_PASSWORD: 'x' });
  fs.writeFileSync(wrongKey, `${/(([A-Z0-9]{5}-){10}[A-Z0-9]{5})/.exec(other.stdout + other.stderr)?.[1] ?? 'AAAAA'}\n`);
  const refused = await cli(['restore-box', '--agent-data-dir', boxB.dataDir, '--data-dir', engineB, '--recovery-key-file', wrongKey]);
  t.not(refused.code, 0, 'another repository\'s recovery key does not open the escrow');
  t.match(refused.stderr, /HF_ESCROW_LOCKED|HF_BAD_RECOVERY_KEY/, 'with a coded error');
  const restored = await cli(['restore-box', '--agent-data-dir', boxB.dataDir, '--data-dir', engineB, '--recovery-key-file', keyFile]);
  t.equal(restored.code, 0, `restore-box: ${restored.stdout}${restored.stderr}`);
  t.match(restored.stdout, /1 sources, 1 schedules, 1 targets, 1 snapshots/, 'sources, schedules, targets and the snapshot are back');

  t.ok(fs.existsSync(path.join(boxB.dataDir, 'replacement-restored')), 'restore-box marks the replacement restored');
  const b = await startAppliance(t, { dataDir: engineB });
  const sources = await b.local.call<{ sources: { name: string }[] }>('GET', '/v1/sources');
  t.same(sources.sources.map((s) => s.name), ['fileserver'], 'the engine has the source');
  const schedules = await b.local.call<{ schedules: { subject: string; cron: string }[] }>('GET', '/v1/schedules');
  t.match(schedules.schedules, [{ subject: 'fileserver', cron: '0 2 * * *' }], 'and its schedule');
  const targets = await b.local.call<{ targets: { name: string }[] }>('GET', '/v1/targets');
  t.match(targets.targets, [{ name: 'vendor' }], 'and the offsite target');
  const file = await b.local.raw('GET', `/v1/snapshots/latest/file?path=${encodeURIComponent(path.join(src, 'finance', 'ledger.xlsx'))}`, {});
  t.equal(file.statusCode, 200, 'the file downloads from the rebuilt repository');
  const got = Buffer.from(await file.body.arrayBuffer());
  t.equal(crypto.createHash('sha256').update(got).digest('hex'), crypto.createHash('sha256').update(original).digest('hex'), 'byte-identical to the original');
  const login = await b.local.call<{ token: string }>('POST', '/v1/login', { user: 'admin', password: 'correct horse battery' });
  t.ok(login.token, 'the admin logs in with the old password');
  // The replacement replicates on as the same tenant: nothing new to send.
  const again = await b.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'replicate', subject: 'vendor' });
  t.equal((await waitJob(b.local, again.job.id)).state, 'done', 'and replicates to the same store as the same tenant');
  // Restored, the replacement escrows its configuration again, for the same recovery key.
  const after = await startAgent(t, { provisioning: p, bundle: release, version: '1.0.0', engine: b.local, dir: path.join(dir, 'box-b') });
  await after.agent.heartbeat();
  const newest = await after.agent.fleet.getWithHeaders('/v1/escrow');
  t.equal(newest.headers['x-holdfast-escrow-version'], '3', 'the restored box escrows again');
  t.ok(newest.body.subarray(40, 48).equals(escrowed.subarray(40, 48)), 'sealed for the same recovery key (the key id in the header)');
});
