// The FleetStore contract (update-channel/fleet/fleet-store.ts), run against
// every implementation: today the SQLite one. A PostgreSQL store for a
// large fleet must pass the same suite.
import path from 'node:path';

import t from 'tap';

import type { FleetStore } from '../update-channel/fleet/fleet-store.ts';
import { SqliteFleetStore } from '../update-channel/fleet/sqlite-fleet-store.ts';
import { compareVersions, haltReason, releaseFor, rolloutBucket } from '../update-channel/fleet/rollout.ts';
import { tmpDir } from './helpers/tmp.ts';

const implementations: Record<string, (dir: string) => Promise<FleetStore>> = {
  sqlite: (dir) => SqliteFleetStore.open(path.join(dir, 'fleet.sqlite')),
};

for (const [name, open] of Object.entries(implementations)) {
  t.test(`${name}: tokens are used once, even by concurrent enrollments; expired ones never`, async (t) => {
    const s = await open(tmpDir(t));
    t.teardown(() => s.close());
    await s.addToken({ hash: 'h1', created: 0, expires: 1000, used: null, usedBy: null, replaces: null, note: '' });
    await t.rejects(s.addToken({ hash: 'h1', created: 0, expires: 1000, used: null, usedBy: null, replaces: null, note: '' }), { code: 'HF_CONFLICT' });
    const results = await Promise.all(['a', 'b', 'c'].map((box) => s.useToken('h1', box, 10)));
    t.equal(results.filter((r) => r !== null).length, 1, 'one of three concurrent uses wins');
    t.equal((await s.token('h1'))?.usedBy !== null, true, 'the token records who used it');
    await s.addToken({ hash: 'h2', created: 0, expires: 1000, used: null, usedBy: null, replaces: null, note: '' });
    t.equal(await s.useToken('h2', 'x', 1000), null, 'at its expiry time a token is refused');
    t.equal(await s.useToken('nope', 'x', 1), null, 'an unknown token is refused');
  });

  t.test(`${name}: certificates, commands, escrow and releases`, async (t) => {
    const s = await open(tmpDir(t));
    t.teardown(() => s.close());
    await s.putBox({ name: 'b1', hostname: 'h', channel: 'stable', at: 1, replacement: false });
    await t.rejects(s.putBox({ name: 'b1', hostname: 'h', channel: 'stable', at: 2, replacement: false }), { code: 'HF_CONFLICT' }, 'a name is enrolled once');
    await s.putBox({ name: 'b2', hostname: 'h', channel: 'stable', at: 1, replacement: false });
    await s.addCertificate({ serial: 'AA', box: 'b1', issued: 1, notAfter: 9, state: 'pending' });
    t.same(await s.promoteCertificate('b1', 'aa'), [], 'nothing to revoke for the first certificate');
    await s.addCertificate({ serial: 'bb', box: 'b1', issued: 2, notAfter: 9, state: 'pending' });
    t.same(await s.promoteCertificate('b1', 'bb'), ['aa'], 'promoting a new one revokes the old');
    t.equal((await s.certificate('AA'))?.state, 'revoked', 'serials compare case-insensitively');
    await s.putBox({ name: 'b1', hostname: 'new', channel: 'stable', at: 5, replacement: true });
    t.match(await s.box('b1'), { hostname: 'new', replaced: 5, enrolled: 1 }, 'a replacement keeps the box, notes when');

    const c1 = await s.addCommand({ box: 'b1', kind: 'set', args: { key: 'channel', value: 'beta' }, created: 1, by: 'v' });
    const c2 = await s.addCommand({ box: 'b1', kind: 'rotate-key', args: {}, created: 2, by: 'v' });
    t.same((await s.takeCommands('b1', 10)).map((c) => c.id), [c1, c2], 'open commands, oldest first');
    t.same((await s.takeCommands('b1', 11)).map((c) => c.id), [c1, c2], 'sent but unacknowledged ones go again');
    t.notOk(await s.finishCommand('b2', c1, true, {}, 12), 'another box cannot finish it');
    t.ok(await s.finishCommand('b1', c1, true, { ok: 1 }, 12), 'its box can');
    t.notOk(await s.finishCommand('b1', c1, false, {}, 13), 'once');
    t.same((await s.takeCommands('b1', 14)).map((c) => c.id), [c2], 'a finished command is not sent again');

    for (let i = 1; i <= 4; i++) await s.putEscrow({ box: 'b1', at: i, sha256: `s${i}`, blob: Buffer.from(`e${i}`) }, 3);
    t.equal((await s.escrow('b1'))?.blob.toString(), 'e4', 'the newest escrow');
    t.same(await s.escrowInfo('b1'), { version: 4, sha256: 's4' }, 'its version and hash alone');
    t.equal(await s.escrowInfo('b2'), null, 'none for a box without one');
    t.equal((await s.escrow('b1', 2))?.blob.toString(), 'e2', 'older versions are kept');
    t.equal(await s.escrow('b1', 1), null, 'up to the limit');

    await s.putRelease({ channel: 'stable', version: '1.1.0', published: 1, percent: 10, halted: null, haltReason: null });
    await t.rejects(s.putRelease({ channel: 'stable', version: '1.1.0', published: 2, percent: 10, halted: null, haltReason: null }), { code: 'HF_CONFLICT' });
    await s.haltRelease('stable', '1.1.0', 5, 'why');
    await s.haltRelease('stable', '1.1.0', 6, 'again');
    t.match(await s.release('stable', '1.1.0'), { halted: 5, haltReason: 'why' }, 'the first halt stands');
    await s.recordOffer('b1', 'stable', '1.1.0', 7);
    await s.recordOffer('b1', 'stable', '1.1.0', 8);
    t.same(await s.offers('stable', '1.1.0'), ['b1'], 'an offer is recorded once per box');
    t.same(await s.revokeBox('b1', 9), ['bb'], 'revoking a box revokes its live certificates');
    t.equal((await s.box('b1'))?.revoked, 9);
  });
}

t.test('rollout arithmetic: versions, stable buckets, the stage, the halt', async (t) => {
  t.ok(compareVersions('1.10.0', '1.9.9') > 0 && compareVersions('2.0.0-rc.1', '2.0.0') < 0 && compareVersions('1.0.0', '1.0.0') === 0, 'semver order');
  const b = rolloutBucket('box-1', 'stable', '2.0.0');
  t.equal(rolloutBucket('box-1', 'stable', '2.0.0'), b, 'a box\'s bucket is stable');
  t.ok(b >= 0 && b < 100);
  const names = Array.from({ length: 2000 }, (_, i) => `box-${i}`);
  const share = names.filter((n) => rolloutBucket(n, 'stable', '2.0.0') < 10).length / names.length;
  t.ok(share > 0.07 && share < 0.13, `10% selects about a tenth of the boxes (${(share * 100).toFixed(1)}%)`);
  const rel = (version: string, percent: number, halted: number | null = null) => ({ channel: 'stable', version, published: 0, percent, halted, haltReason: null });
  t.equal(releaseFor('box-1', 'stable', '1.0.0', [rel('2.0.0', 100), rel('3.0.0', 100)])?.version, '3.0.0', 'the newest release the box is in the stage of');
  t.equal(releaseFor('box-1', 'stable', '3.0.0', [rel('2.0.0', 100)]), null, 'never an older one');
  t.equal(releaseFor('box-1', 'stable', '1.0.0', [rel('2.0.0', 100, 5)]), null, 'never a halted one');
  t.equal(releaseFor('box-1', 'beta', '1.0.0', [rel('2.0.0', 100)]), null, 'only from the box\'s channel');
  const r = (outcome: 'installed' | 'failed') => ({ box: 'b', channel: 'stable', version: '2.0.0', outcome, at: 0, detail: 'd' });
  t.equal(haltReason([r('installed'), r('installed')]), null, 'no failure, no halt');
  t.equal(haltReason([r('installed'), r('installed'), r('installed'), r('installed'), r('installed'), r('failed')]), null, '1 in 6 is under 20%');
  t.match(haltReason([r('installed'), r('failed')]), /1 of 2/, 'half failing halts');
});
