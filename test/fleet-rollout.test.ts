// A staged rollout that halts: a release published to 10% of the boxes
// fails its health check on the boxes of that first stage (its runtime does
// not start), they roll back and report it, the rollout halts at once, and
// no box outside the first stage is ever offered it, not even after the
// vendor tries to raise the stage.
import fs from 'node:fs';
import path from 'node:path';

import t from 'tap';

import { rolloutBucket } from '../update-channel/fleet/rollout.ts';
import { lightRelease, startAgent, startChannel } from './helpers/fleet.ts';
import { tmpDir } from './helpers/tmp.ts';

t.test('with 10% and a failing release, the rollout halts and no box beyond the first stage gets it', async (t) => {
  const ch = await startChannel(t);
  const dir = tmpDir(t, 'hf-rollout-');
  const v1 = await lightRelease(dir, '1.0.0');
  const bad = await lightRelease(dir, '2.0.0', { broken: true });
  const inStage = (name: string) => rolloutBucket(name, 'stable', '2.0.0') < 10;
  // Enough boxes that the first stage holds at least two and most are outside it.
  const boxes: Awaited<ReturnType<typeof startAgent>>[] = [];
  while ((boxes.filter((b) => inStage(b.agent.identity.name)).length < 2 || boxes.length < 20) && boxes.length < 120) {
    boxes.push(await startAgent(t, { provisioning: await ch.provisioningViaApi(), bundle: v1, version: '1.0.0', dir: path.join(dir, `box${boxes.length}`), healthTimeoutMs: 20_000 }));
  }
  const stage = boxes.filter((b) => inStage(b.agent.identity.name));
  const outside = boxes.filter((b) => !inStage(b.agent.identity.name));
  t.ok(stage.length >= 2 && outside.length >= 10, `${boxes.length} boxes: ${stage.length} in the 10% stage, ${outside.length} outside`);
  const pub = await ch.cli(['publish', '--dir', ch.dir, '--offline-keys', ch.offlineKeys, '--channel', 'stable', '--version', '2.0.0', '--percent', '10', bad]);
  t.equal(pub.code, 0, `published at 10%: ${pub.stdout.trim()}`);

  // Every box heartbeats; the stage's boxes install, fail the health check, roll back and report.
  const offered = new Set<string>();
  for (const b of boxes) {
    const a = await b.agent.heartbeat();
    if (a.update) offered.add(b.agent.identity.name);
  }
  const outcomes = await Promise.all(boxes.map((b) => b.agent.lastUpdate?.catch((e: unknown) => ({ state: 'error', e })) ?? null));
  t.same([...offered].sort(), stage.map((b) => b.agent.identity.name).sort(), 'exactly the first stage\'s boxes were offered 2.0.0');
  for (const [i, b] of boxes.entries()) {
    if (!inStage(b.agent.identity.name)) continue;
    t.match(outcomes[i], { state: 'rolled-back', from: '1.0.0', to: '2.0.0', reason: /self-test failed.*broken runtime/s }, `${b.agent.identity.name} rolled back`);
  }
  for (const b of boxes) t.equal(await b.agent.version(), '1.0.0', `${b.agent.identity.name} runs 1.0.0`);
  const rel = await ch.vendor<{ releases: { version: string; halted: number | null; haltReason: string; offered: number; reports: { box: string; outcome: string }[] }[] }>('GET', '/v1/fleet/releases');
  const r = rel.body.releases.find((x) => x.version === '2.0.0')!;
  t.ok(r.halted, `the rollout halted: ${r.haltReason}`);
  t.equal(r.offered, stage.length, 'the fleet offered it to the stage only');
  t.ok(r.reports.every((x) => x.outcome === 'failed') && r.reports.length === stage.length, 'every box that tried reported the failure');
  for (const b of outside) t.notOk(fs.existsSync(path.join(b.dataDir, 'downloads')), `${b.agent.identity.name} never downloaded it`);

  // The vendor cannot raise a halted rollout by accident; boxes get nothing more.
  const raise = await ch.cli(['rollout', '--dir', ch.dir, '--channel', 'stable', '--version', '2.0.0', '--percent', '50']);
  t.not(raise.code, 0, 'raising a halted rollout is refused');
  t.match(raise.stderr, /HF_CONFLICT.*halted/, 'and says it was halted and how to resume');
  for (const b of boxes) {
    const a = await b.agent.heartbeat();
    t.equal(a.update, null, `${b.agent.identity.name} is offered nothing`);
  }
});
