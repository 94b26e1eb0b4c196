// The configuration escrow: the box's configuration sealed for its recovery
// key (ECIES, X25519), opened only with that key; and a lost box rebuilt on a
// replacement from its escrow and its offsite copy, with a new certificate of
// the same tenant: sources, schedules, retention, users (old passwords),
// targets and snapshots are back, and restored files are byte-identical.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import pino from 'pino';
import t from 'tap';

import { EngineClient } from '../appliance/console/index.ts';

import { ApplianceKey } from '../appliance/engine/secrets.ts';
import { StateStore } from '../appliance/engine/state-store.ts';
import { Engine, restoreFromEscrow } from '../appliance/engine/index.ts';
import {
  type EscrowConfig, EscrowKeyPair, canonicalJson, escrowDigest, escrowMac, hasValidEscrowMac, openEscrow, readEscrowHeader, sealEscrow,
} from '../appliance/escrow/index.ts';
import { issueCertificate } from '../appliance/pki/index.ts';
import { Repository, formatRecoveryKey } from '../appliance/repository/index.ts';
import { LocalStorage } from '../appliance/storage/index.ts';
import { ConsoleClient, startAppliance, waitJob } from './helpers/appliance.ts';
import { cli } from './helpers/cli.ts';
import { makePki, startStore } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code;
  }
};
const asyncCode = async (p: Promise<unknown>): Promise<string | undefined> => p.then(() => undefined, (err: unknown) => (err as { code?: string }).code);

const sample = (): EscrowConfig => ({
  version: 1,
  box: { hostname: 'box1', name: 'acme', program: 'holdfast 0.1.0' },
  repository: { id: 'ab'.repeat(32), password: 'the-repository-passphrase-0123456789' },
  sources: [
    { name: 'files', spec: { kind: 'local', paths: ['/srv/data'] }, secret: {} },
    { name: 'share', spec: { kind: 'smb', host: 'fs1', port: 445, domain: 'CORP', user: 'backup', share: 'data', paths: ['/'] }, secret: { password: 'smb-Pa55word-xyz' } },
  ],
  schedules: [{ job: 'backup', subject: 'files', cron: '0 3 * * *', enabled: true }],
  retention: { daily: 7, weekly: 4 },
  protected: [],
  users: [{ name: 'admin', role: 'admin', password: 'scrypt$32768$8$1$c2FsdA==$aGFzaA==', created: '2026-01-01T00:00:00.000Z' }],
  targets: [{ name: 'offsite', endpoints: [{ host: 'store1', port: 7443 }], ca: null, tenant: 'acme', servername: null, rate: '20MiB/s', windows: [], spread: false }],
  mac: '0'.repeat(64),
});

t.test('seal and open: a round trip, only with the right recovery key; damage is told apart', async (t) => {
  const key = formatRecoveryKey(Buffer.alloc(32, 7)); // fixed, so that the typo below is always one the checksum catches
  const pair = EscrowKeyPair.fromRecoveryKey(key);
  t.same(EscrowKeyPair.fromRecoveryKey(key.toLowerCase()).publicKey, pair.publicKey, 'the key pair is derived: the same recovery key (as typed) gives the same public key');
  t.equal(pair.publicKey.length, 32);
  const config = sample();
  const blob = sealEscrow(pair.publicKey, config);
  t.same(openEscrow(blob, key), config, 'what was sealed opens, equal');
  t.notSame(sealEscrow(pair.publicKey, config), blob, 'every seal uses a fresh ephemeral key');
  t.equal(blob.subarray(0, 8).toString('latin1'), 'HFESCR\0\x01', 'the magic and version');
  t.equal(readEscrowHeader(blob).keyId, pair.keyId, 'the header names the key it is sealed for');
  t.equal(blob.length % 1024, 60 + 16, 'the plaintext is padded to whole KiB');
  for (const secret of [config.repository.password, 'smb-Pa55word-xyz', 'scrypt$32768']) {
    t.notOk(blob.includes(Buffer.from(secret)), `${secret.slice(0, 12)}… is not in the blob`);
  }

  t.equal(code(() => openEscrow(blob, formatRecoveryKey(randomBytes(32)))), 'HF_ESCROW_LOCKED', 'another recovery key: HF_ESCROW_LOCKED');
  t.equal(code(() => openEscrow(blob, 'ABCDE-FGHJK')), 'HF_BAD_RECOVERY_KEY', 'a malformed recovery key: HF_BAD_RECOVERY_KEY');
  const typo = key.replace(/^./, (c) => (c === '0' ? '1' : '0'));
  t.equal(code(() => openEscrow(blob, typo)), 'HF_BAD_RECOVERY_KEY', 'a mistyped one is caught by its checksum');
  const flip = (at: number) => {
    const b = Buffer.from(blob);
    b[at]! ^= 1;
    return b;
  };
  t.equal(code(() => openEscrow(flip(blob.length - 30), key)), 'HF_REPO_CORRUPT', 'a flipped ciphertext bit: damaged (HF_REPO_CORRUPT)');
  t.equal(code(() => openEscrow(flip(20), key)), 'HF_REPO_CORRUPT', 'a flipped ephemeral-key bit: damaged');
  t.equal(code(() => openEscrow(flip(55), key)), 'HF_REPO_CORRUPT', 'a flipped nonce bit (in the AAD): damaged');
  t.equal(code(() => openEscrow(blob.subarray(0, blob.length - 1), key)), 'HF_REPO_CORRUPT', 'truncated: damaged');
  t.equal(code(() => openEscrow(blob.subarray(0, 40), key)), 'HF_REPO_CORRUPT', 'too short to be an escrow');
  t.equal(code(() => openEscrow(Buffer.from('{"not":"an escrow"}'.padEnd(200)), key)), 'HF_REPO_CORRUPT', 'not an escrow at all');
  const v2 = Buffer.from(blob);
  v2[7] = 2;
  t.equal(code(() => openEscrow(v2, key)), 'HF_UNSUPPORTED_VERSION', 'a newer format version: HF_UNSUPPORTED_VERSION');
  t.equal(code(() => sealEscrow(Buffer.alloc(31), config)), 'HF_INVALID_ARGUMENT', 'a public key of the wrong size is refused');
  t.equal(code(() => sealEscrow(Buffer.alloc(32), config)), 'HF_INVALID_ARGUMENT', 'a low-order public key is refused');

  // The change token: keyed, stable, and blind to the order things were read in.
  const shuffled = JSON.parse(JSON.stringify(config)) as EscrowConfig;
  shuffled.retention = { weekly: 4, daily: 7 };
  t.equal(escrowDigest(shuffled), escrowDigest(config), 'key order does not change the token');
  t.equal(canonicalJson({ b: 1, a: [{ d: 1, c: 2 }] }), '{"a":[{"c":2,"d":1}],"b":1}');
  t.not(escrowDigest({ ...config, retention: { daily: 8 } }), escrowDigest(config), 'a change changes it');
  t.not(escrowDigest({ ...config, repository: { ...config.repository, password: 'other' } }), escrowDigest(config), 'it is keyed by the passphrase');

  // The MAC that binds a configuration to its repository's key.
  const macKey = randomBytes(32);
  const signed = { ...config, mac: escrowMac(config, macKey) };
  t.ok(hasValidEscrowMac(signed, macKey), 'a configuration carries its MAC');
  t.notOk(hasValidEscrowMac({ ...signed, users: [...signed.users, { ...signed.users[0]!, name: 'mallory' }] }, macKey), 'an added user breaks it');
  t.notOk(hasValidEscrowMac(signed, randomBytes(32)), 'another repository\'s key does not verify it');
});

t.test('a lost box, rebuilt on a replacement from its escrow and its offsite copy', async (t) => {
  const dir = tmpDir(t);
  const pki = await makePki(path.join(dir, 'pki'), ['acme', 'other']);
  const store = await startStore(t, { dir: path.join(dir, 'store'), pki });
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'docs'), { recursive: true });
  const big = randomBytes(3 << 20);
  fs.writeFileSync(path.join(src, 'docs', 'report.bin'), big);
  fs.writeFileSync(path.join(src, 'notes.txt'), 'the original notes\n');

  // ---- the old box: set up as an admin would ----
  const app = await startAppliance(t, { dataDir: path.join(dir, 'old') });
  const anon = new ConsoleClient(app);
  t.teardown(() => anon.close());
  const setup = await anon.request('POST', '/api/v1/setup', { user: 'admin', password: 'admin password 123' });
  t.equal(setup.status, 200, 'setup');
  const recoveryKey = setup.json.recoveryKey as string;
  t.match(recoveryKey, /^[0-9A-Z]{5}(-[0-9A-Z]{5}){10}$/, 'setup shows the recovery key');
  const admin = new ConsoleClient(app);
  t.teardown(() => admin.close());
  t.equal((await admin.login('admin', 'admin password 123')).status, 200);
  const ok = async (what: string, method: string, p: string, body?: unknown) => {
    const a = await admin.request(method, p, body);
    t.equal(a.status, 200, `${what}${a.status === 200 ? '' : `: ${JSON.stringify(a.json)}`}`);
    return a.json;
  };
  await ok('a local source with a schedule', 'POST', '/api/v1/sources', { name: 'files', kind: 'local', paths: [src], schedule: '15 2 * * *' });
  await ok('an SMB source with a password', 'POST', '/api/v1/sources', { url: 'smb://CORP;backup@fs1.example/data/projects', name: 'share', password: 'smb-Pa55word-xyz' });
  await ok('a replication schedule', 'POST', '/api/v1/schedules', { job: 'replicate', cron: '30 4 * * *' });
  await ok('a retention policy', 'PUT', '/api/v1/retention', { policy: { daily: 7, weekly: 4 } });
  await ok('a second user', 'POST', '/api/v1/users', { user: 'olga', password: 'olga password 123', role: 'operator' });
  await ok('a first target that will be gone', 'POST', '/api/v1/targets', {
    name: 'gone', endpoints: '127.0.0.1:1',
    ca: fs.readFileSync(pki.ca, 'utf8'), cert: fs.readFileSync(pki.cert('acme').cert, 'utf8'), key: fs.readFileSync(pki.cert('acme').key, 'utf8'),
  });
  await ok('a target on a real store', 'POST', '/api/v1/targets', {
    name: 'offsite', endpoints: store.endpoint, rate: '200MiB/s', windows: ['Mon-Fri 08:00-18:00=100MiB/s'],
    ca: fs.readFileSync(pki.ca, 'utf8'), cert: fs.readFileSync(pki.cert('acme').cert, 'utf8'), key: fs.readFileSync(pki.cert('acme').key, 'utf8'),
  });
  const backup = await ok('a backup', 'POST', '/api/v1/jobs', { kind: 'backup', subject: 'files' });
  t.equal((await waitJob(app.local, backup.job.id)).state, 'done', 'the backup is done');
  const snaps = (await ok('snapshots', 'GET', '/api/v1/snapshots')).snapshots as { id: string }[];
  t.equal(snaps.length, 1);
  await ok('protect the snapshot', 'PUT', `/api/v1/snapshots/${snaps[0]!.id}/protected`, { protected: true });
  const repl = await ok('a replication', 'POST', '/api/v1/jobs', { kind: 'replicate', subject: 'offsite' });
  t.equal((await waitJob(app.local, repl.job.id)).state, 'done', 'the replication is done');

  // ---- the escrow, as the agent fetches it ----
  const fetchEscrow = async () => {
    const r = await app.local.raw('GET', '/v1/escrow', {});
    const body = Buffer.from(await r.body.arrayBuffer());
    t.equal(r.statusCode, 200, `GET /v1/escrow with the local token${r.statusCode === 200 ? '' : `: ${body.toString()}`}`);
    return { body, digest: String(r.headers['x-holdfast-escrow-sha256']), type: String(r.headers['content-type']), keyId: String(r.headers['x-holdfast-escrow-key-id']) };
  };
  const first = await fetchEscrow();
  t.equal(first.type, 'application/octet-stream');
  t.match(first.digest, /^[0-9a-f]{64}$/, 'with the change token');
  t.equal(first.keyId, EscrowKeyPair.fromRecoveryKey(recoveryKey).keyId, 'sealed for the recovery key shown at setup, which the engine no longer has');
  const again = await fetchEscrow();
  t.equal(again.digest, first.digest, 'nothing changed: the same token');
  t.notSame(again.body, first.body, 'but a new seal');
  const asAdmin = await admin.request('GET', '/api/v1/escrow');
  t.same([asAdmin.status, asAdmin.json?.error?.code], [403, 'HF_FORBIDDEN'], 'a console session, even an admin\'s, may not fetch the escrow');
  t.equal((await admin.request('GET', '/api/v1/escrow/key')).json.key.keyId, first.keyId, 'an admin sees which key it is sealed for');

  await ok('a retention change', 'PUT', '/api/v1/retention', { policy: { daily: 7, weekly: 4, monthly: 6 } });
  const changed = await fetchEscrow();
  t.not(changed.digest, first.digest, 'a configuration change changes the token');

  // What the blob must not show: the passphrase, a source's password, a password hash.
  const state = await StateStore.open(path.join(app.dataDir, 'state.sqlite'), await ApplianceKey.load(path.join(app.dataDir, 'appliance.key')));
  const { password: passphrase } = (await state.getSealed<{ dir: string; password: string }>('repository'))!;
  const adminHash = (await state.user('admin'))!.password;
  await state.close();
  for (const [what, secret] of [['the repository passphrase', passphrase], ['the SMB password', 'smb-Pa55word-xyz'], ['the admin\'s hash', adminHash.split('$').pop()!]] as const) {
    t.notOk(changed.body.includes(Buffer.from(secret)) || changed.body.includes(Buffer.from(secret).toString('base64')), `the blob does not hold ${what} in clear`);
  }
  const opened = openEscrow(changed.body, recoveryKey);
  t.equal(opened.repository.password, passphrase, 'the recovery key opens it: the passphrase is inside');
  t.same(opened.sources.find((s) => s.name === 'share')?.secret, { password: 'smb-Pa55word-xyz' }, 'with the source\'s secret');
  t.same(opened.box.name, 'acme', 'the box\'s name is its tenant');

  // Setting the key again (as for an adopted repository): only this repository's recovery key.
  const badKey = await admin.request('PUT', '/api/v1/escrow/key', { recoveryKey: formatRecoveryKey(randomBytes(32)) });
  t.same([badKey.status, badKey.json.error.code], [400, 'HF_BAD_RECOVERY_KEY'], 'another repository\'s recovery key is refused');
  const garbled = await admin.request('PUT', '/api/v1/escrow/key', { recoveryKey: 'not a key' });
  t.same([garbled.status, garbled.json.error.code], [400, 'HF_BAD_RECOVERY_KEY'], 'a malformed one too');
  t.equal((await ok('the right one', 'PUT', '/api/v1/escrow/key', { recoveryKey })).keyId, first.keyId, 'the right one is the same key');

  // The CLI: export (as root on the box) and show (secrets masked).
  const escrowFile = path.join(dir, 'escrow.bin');
  const keyFile = path.join(dir, 'recovery.txt');
  fs.writeFileSync(keyFile, `${recoveryKey}\n`);
  const exported = await cli(['--json', 'escrow', 'export', '--data-dir', app.dataDir, '--to', escrowFile]);
  t.equal(exported.code, 0, `holdfast escrow export ${exported.stderr}`);
  t.equal(exported.json.digest, changed.digest, 'the CLI exports the same configuration');
  const shown = await cli(['escrow', 'show', '--escrow-file', escrowFile, '--recovery-key-file', keyFile]);
  t.equal(shown.code, 0, `holdfast escrow show ${shown.stderr}`);
  t.match(shown.stdout, /source share: smb:\/\/backup@fs1\.example:445 \/projects, with password/, 'show lists the sources');
  t.match(shown.stdout, /user olga: operator/, 'and the users');
  t.notMatch(shown.stdout, new RegExp([passphrase, 'smb-Pa55word-xyz', 'scrypt\\$'].map((s) => s.replace(/[$-]/g, '\\$&')).join('|')), 'with every secret masked');
  const wrongShow = await cli(['--json', 'escrow', 'show', '--escrow-file', escrowFile], { HOLDFAST_RECOVERY_KEY: formatRecoveryKey(randomBytes(32)) });
  t.equal(wrongShow.code, 1);
  t.match(wrongShow.stderr, /HF_ESCROW_LOCKED/, 'show with another recovery key: HF_ESCROW_LOCKED');

  // After the escrow was sealed, someone changes the repository's passphrase (and the store's copy follows):
  // the escrowed passphrase no longer opens it, the recovery key still does.
  const repoDir = path.join(app.dataDir, 'repository');
  const passwd = await cli(['--repo', repoDir, 'key', 'passwd'], { HOLDFAST_PASSWORD: passphrase, HOLDFAST_NEW_PASSWORD: 'a passphrase set by hand 42' });
  t.equal(passwd.code, 0, `holdfast key passwd ${passwd.stderr}`);
  const replByHand = await cli(['--repo', repoDir, 'replicate', '--target', 'offsite']);
  t.equal(replByHand.code, 0, `holdfast replicate ${replByHand.stderr}`);

  const before = {
    snapshots: (await app.local.call<{ snapshots: { id: string; time: string }[] }>('GET', '/v1/snapshots')).snapshots.map((s) => s.id),
    sources: (await app.local.call<{ sources: unknown[] }>('GET', '/v1/sources')).sources,
    schedules: (await app.local.call<{ schedules: { job: string; subject: string | null; cron: string; enabled: boolean }[] }>('GET', '/v1/schedules')).schedules,
    users: (await app.local.call<{ users: { name: string; role: string }[] }>('GET', '/v1/users')).users.map((u) => `${u.name}:${u.role}`),
  };

  // ---- the replacement: a new certificate with the same name, from the same CA ----
  const pki2 = path.join(dir, 'pki2');
  fs.mkdirSync(pki2);
  for (const f of ['ca.crt', 'ca.key', 'crl.pem']) fs.copyFileSync(path.join(pki.dir, f), path.join(pki2, f));
  await issueCertificate(pki2, { name: 'acme', kind: 'appliance' });
  const identity = { cert: path.join(pki2, 'acme.crt'), key: path.join(pki2, 'acme.key'), ca: pki.ca };
  t.not(fs.readFileSync(identity.cert, 'utf8'), fs.readFileSync(pki.cert('acme').cert, 'utf8'), 'a new certificate');

  const fresh = path.join(dir, 'new');
  t.equal(await asyncCode(restoreFromEscrow({ dataDir: fresh, escrow: changed.body, recoveryKey: formatRecoveryKey(randomBytes(32)), identity })),
    'HF_ESCROW_LOCKED', 'the wrong recovery key restores nothing');
  t.equal(await asyncCode(restoreFromEscrow({ dataDir: fresh, escrow: changed.body, recoveryKey, identity: { ...pki.cert('other'), ca: pki.ca } })),
    'HF_PKI_INVALID', 'a certificate of another tenant is refused');
  t.equal(await asyncCode(restoreFromEscrow({ dataDir: fresh, escrow: changed.body, recoveryKey, identity: { ...identity, key: pki.cert('acme').key } })),
    'HF_PKI_INVALID', 'a key that is not the certificate\'s is refused');
  t.equal(await asyncCode(restoreFromEscrow({ dataDir: app.dataDir, escrow: changed.body, recoveryKey, identity })),
    'HF_CONFLICT', 'a data directory with a configured (running) engine is refused');
  t.notOk(fs.existsSync(path.join(fresh, 'repository', 'config')), 'nothing was cloned by the refused attempts');
  // Someone who knows the escrow public key seals a configuration of their own (an admin of theirs): it opens, but is refused.
  const forged = sealEscrow(EscrowKeyPair.fromRecoveryKey(recoveryKey).publicKey, { ...opened, users: [...opened.users, { ...opened.users[0]!, name: 'mallory' }] });
  t.equal(openEscrow(forged, recoveryKey).users.length, 3, 'a forged escrow opens with the recovery key');
  t.equal(await asyncCode(restoreFromEscrow({ dataDir: fresh, escrow: forged, recoveryKey, identity })), 'HF_REPO_CORRUPT',
    'but its configuration is not authenticated by the repository\'s key: refused');
  t.notOk(fs.existsSync(path.join(fresh, 'repository', 'config')), 'before anything was downloaded');

  // The old box is gone.
  await app.killEngine();
  const progress: string[] = [];
  const r = await restoreFromEscrow({ dataDir: fresh, escrow: changed.body, recoveryKey, identity, onProgress: (m) => progress.push(m) });
  t.same({ sources: r.sources, schedules: r.schedules, targets: r.targets, snapshots: r.snapshots, users: r.users, clonedFrom: r.clonedFrom, tenant: r.tenant },
    { sources: 2, schedules: 2, targets: 2, snapshots: 1, users: 2, clonedFrom: 'offsite', tenant: 'acme' }, 'what the restore reports');
  t.ok(progress.some((m) => /target gone failed/.test(m)), 'the first target could not be reached: the next one was tried');
  t.ok(progress.some((m) => /cloned from offsite/.test(m)), 'it reported its progress');
  t.ok(progress.some((m) => /opened it with the recovery key and set a new passphrase/.test(m)), 'the changed passphrase was replaced, through the recovery key');
  t.equal(await asyncCode(restoreFromEscrow({ dataDir: fresh, escrow: changed.body, recoveryKey, identity })), 'HF_CONFLICT', 'restoring twice into one data directory is refused');

  // ---- the replacement runs as the old box ----
  const app2 = await startAppliance(t, { dataDir: fresh });
  t.equal((await app2.local.call<{ setupNeeded: boolean }>('GET', '/v1/status')).setupNeeded, false, 'no setup needed: the users are back');
  const admin2 = new ConsoleClient(app2);
  t.teardown(() => admin2.close());
  t.equal((await admin2.login('admin', 'admin password 123')).status, 200, 'the admin logs in with the old password');
  const olga = new ConsoleClient(app2);
  t.teardown(() => olga.close());
  t.equal((await olga.login('olga', 'olga password 123')).status, 200, 'and the operator with hers');
  t.same((await app2.local.call<{ users: { name: string; role: string }[] }>('GET', '/v1/users')).users.map((u) => `${u.name}:${u.role}`), before.users, 'the same users and roles');
  const sources2 = (await app2.local.call<{ sources: { name: string; spec: unknown; secrets: unknown }[] }>('GET', '/v1/sources')).sources;
  t.same(sources2.map((s) => [s.name, s.spec, s.secrets]), (before.sources as typeof sources2).map((s) => [s.name, s.spec, s.secrets]), 'the same sources, with their secrets');
  const st2 = await StateStore.open(path.join(fresh, 'state.sqlite'), await ApplianceKey.load(path.join(fresh, 'appliance.key')));
  t.same(await st2.sourceSecret('share'), { password: 'smb-Pa55word-xyz' }, 'the SMB password, sealed by the new box\'s appliance key');
  await st2.close();
  const schedules2 = (await app2.local.call<{ schedules: typeof before.schedules }>('GET', '/v1/schedules')).schedules;
  t.same(schedules2.map((s) => [s.job, s.subject, s.cron, s.enabled]), before.schedules.map((s) => [s.job, s.subject, s.cron, s.enabled]), 'the same schedules');
  const retention2 = await app2.local.call<{ policy: unknown; protected: string[] }>('GET', '/v1/retention');
  t.same(retention2, { policy: { daily: 7, weekly: 4, monthly: 6 }, protected: [snaps[0]!.id] }, 'the retention policy and the protected snapshot');
  const targets2 = (await app2.local.call<{ targets: { name: string; endpoints: string[]; rate: string; windows: string[] }[] }>('GET', '/v1/targets')).targets;
  t.same(targets2.map((x) => [x.name, x.endpoints, x.rate, x.windows]),
    [['gone', ['127.0.0.1:1'], null, []], ['offsite', [store.endpoint], '200MiB/s', ['Mon-Fri 08:00-18:00=100MiB/s']]], 'the targets');
  t.equal(fs.readFileSync(path.join(fresh, 'pki', 'targets', 'offsite', 'appliance.crt'), 'utf8'), fs.readFileSync(identity.cert, 'utf8'), 'with the new box\'s own certificate');
  const snaps2 = (await app2.local.call<{ snapshots: { id: string }[] }>('GET', '/v1/snapshots')).snapshots.map((s) => s.id);
  t.same(snaps2, before.snapshots, 'the same snapshots');

  // Files come back byte for byte: a download and a restore job.
  const file = path.join(src, 'docs', 'report.bin');
  const dl = await admin2.request('GET', `/api/v1/snapshots/latest/file?path=${encodeURIComponent(file)}`);
  t.equal(dl.status, 200);
  t.ok(dl.body.equals(big), 'a downloaded file is byte-identical to the original');
  const job = (await app2.local.call<{ job: { id: number; params: { target: string } } }>('POST', '/v1/restores', { snapshot: 'latest', paths: [path.join(src, 'docs')] })).job;
  t.equal((await waitJob(app2.local, job.id)).state, 'done', 'a restore job on the new box');
  t.ok(fs.readFileSync(path.join(job.params.target, file)).equals(big), 'the restored file is byte-identical to the original');

  // The new box keeps going: it replicates with its new certificate, and seals escrows for the same key.
  const repl2 = (await app2.local.call<{ job: { id: number } }>('POST', '/v1/jobs', { kind: 'replicate', subject: 'offsite' })).job;
  const done2 = await waitJob(app2.local, repl2.id);
  t.equal(done2.state, 'done', `the new box replicates to the old tenant ${done2.error ? JSON.stringify(done2.error) : ''}`);
  const r2 = await app2.local.raw('GET', '/v1/escrow', {});
  const blob2 = Buffer.from(await r2.body.arrayBuffer());
  t.equal(r2.statusCode, 200, 'the new box serves its escrow');
  t.same(openEscrow(blob2, recoveryKey).users.map((u) => u.name), ['admin', 'olga'], 'sealed for the same recovery key');
});

t.test('an engine on an adopted repository has no escrow key until the recovery key is given once', async (t) => {
  const dir = tmpDir(t);
  const repoDir = path.join(dir, 'repo');
  const { repo, recoveryKey } = await Repository.init(new LocalStorage(repoDir), 'an adopted passphrase 1');
  await repo.close();
  const dataDir = path.join(dir, 'data');
  const engine = await Engine.open({ dataDir, repo: { dir: repoDir, password: 'an adopted passphrase 1' }, log: pino({ level: 'silent' }), schedule: false });
  await engine.start();
  t.teardown(() => engine.stop());
  const local = new EngineClient(engine.socketPath, `Local ${engine.localToken}`);
  t.teardown(() => local.close());
  const missing = await local.raw('GET', '/v1/escrow', {});
  const answer = JSON.parse(await missing.body.text()) as { error: { code: string; message: string } };
  t.same([missing.statusCode, answer.error.code], [404, 'HF_ESCROW_NOT_FOUND'], 'no escrow key: 404 HF_ESCROW_NOT_FOUND');
  t.match(answer.error.message, /holdfast escrow set-key --recovery-key-file/, 'saying how to set it');
  t.same((await local.call<{ key: unknown }>('GET', '/v1/escrow/key')).key, null);
  const dash = await local.call<{ warnings: { message: string }[] }>('GET', '/v1/dashboard');
  t.ok(dash.warnings.some((w) => /no escrow key/.test(w.message)), 'the dashboard says so');

  const keyFile = path.join(dir, 'recovery.txt');
  fs.writeFileSync(keyFile, formatRecoveryKey(randomBytes(32)));
  const wrong = await cli(['escrow', 'set-key', '--data-dir', dataDir, '--recovery-key-file', keyFile]);
  t.equal(wrong.code, 1);
  t.match(wrong.stderr, /HF_BAD_RECOVERY_KEY/, 'another repository\'s recovery key is refused');
  fs.writeFileSync(keyFile, `${recoveryKey}\n`);
  const set = await cli(['--json', 'escrow', 'set-key', '--data-dir', dataDir, '--recovery-key-file', keyFile]);
  t.equal(set.code, 0, `holdfast escrow set-key ${set.stderr}`);
  t.equal(set.json.keyId, EscrowKeyPair.fromRecoveryKey(recoveryKey).keyId);
  const r = await local.raw('GET', '/v1/escrow', {});
  const blob = Buffer.from(await r.body.arrayBuffer());
  t.equal(r.statusCode, 200, 'now the engine seals its configuration');
  t.equal(openEscrow(blob, recoveryKey).repository.password, 'an adopted passphrase 1', 'for that recovery key');
  t.ok((await engine.state.auditLog()).some((e) => e.action === 'escrow.key' && e.user === 'local'), 'setting the key is audited');
});
