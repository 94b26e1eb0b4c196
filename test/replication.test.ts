import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import t, { type Test } from 'tap';

import { deriveWorkingKeys, parseKeyFile, unlockMasterKey } from '../appliance/repository/keys.ts';
import { cli, startCli, finish } from './helpers/cli.ts';
import { CountingProxy, makePki, startStore } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';
import { compareTrees, pseudoRandom } from './helpers/tree.ts';

const MiB = 1 << 20;

/** Every file under dir, relative path → bytes (the repository's replicated files, or a tenant's). */
function filesUnder(dir: string, skip: (rel: string) => boolean = () => false): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const rel = path.relative(dir, p);
      if (skip(rel)) continue;
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.set(rel, fs.readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

/** The files replication moves: everything but locks, tmp and the appliance-local replication state. */
const repoFiles = (repo: string) => filesUnder(repo, (rel) => /^(locks|tmp|replication)(\/|$)/.test(rel));
const tenantFiles = (store: string, tenant: string) => filesUnder(path.join(store, 'tenants', tenant), (rel) => /^(partial|trash|tmp)(\/|$)/.test(rel));
const totalBytes = (m: Map<string, Buffer>) => [...m.values()].reduce((s, b) => s + b.length, 0);

function sameFiles(t: Test, store: string, repo: string, what: string): void {
  const want = repoFiles(repo);
  const got = tenantFiles(store, 'acme');
  t.same([...got.keys()].sort(), [...want.keys()].sort(), `${what}: the store holds exactly the repository's files`);
  const differ = [...want].filter(([k, v]) => !got.get(k)?.equals(v)).map(([k]) => k);
  t.same(differ, [], `${what}: every file byte-identical`);
}

const work = tmpDir(t, 'hf-repl-');
const env = { HOLDFAST_PASSWORD: 'correct horse', HOLDFAST_CACHE_DIR: path.join(work, 'cache') };
const pki = await makePki(path.join(work, 'pki'), ['acme']);
const acme = pki.cert('acme');
const tlsFlags = ['--ca', pki.ca, '--cert', acme.cert, '--key', acme.key];

async function ok(args: string[], extraEnv: Record<string, string | undefined> = {}) {
  const r = await cli(['--json', ...args], { ...env, ...extraEnv });
  if (r.code !== 0) throw new Error(`holdfast ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** A source tree with plaintext markers (in contents and in names) and some incompressible data. */
function makeSource(root: string, randomMiB: number, seed: string): string[] {
  const markers = [`HOLDFAST-PLAINTEXT-MARKER-${seed}-alpha`, `invoice-${seed}-ACME-confidential`];
  fs.mkdirSync(path.join(root, 'docs'), { recursive: true });
  fs.writeFileSync(path.join(root, 'docs', 'letter.txt'), `${markers[0]}\n`.repeat(2000));
  fs.writeFileSync(path.join(root, 'docs', `${markers[1]}.txt`), 'short');
  fs.mkdirSync(path.join(root, 'data'), { recursive: true });
  for (let i = 0; i < randomMiB / 4; i++) fs.writeFileSync(path.join(root, 'data', `r${i}.bin`), pseudoRandom(`${seed}-${i}`, 4 * MiB));
  return markers;
}

t.test('two stores each receive a complete copy; a clone from each restores byte-identical data; stores hold no plaintext and no key', async (t) => {
  const src = path.join(work, 'src1');
  const markers = makeSource(src, 24, 'two');
  const repo = path.join(work, 'repo1');
  await ok(['init', '--repo', repo]);
  await ok(['backup', '--repo', repo, src]);
  fs.appendFileSync(path.join(src, 'docs', 'letter.txt'), 'a second snapshot\n');
  await ok(['backup', '--repo', repo, src]);
  const s1 = await startStore(t, { dir: path.join(work, 'store-a'), pki, name: 'store-a' });
  const s2 = await startStore(t, { dir: path.join(work, 'store-b'), pki, name: 'store-b' });
  await ok(['target', 'add', '--repo', repo, 'offsite-a', '--endpoint', s1.endpoint, ...tlsFlags]);
  await ok(['target', 'add', '--repo', repo, 'offsite-b', '--endpoint', s2.endpoint, ...tlsFlags]);
  const r = await ok(['replicate', '--repo', repo]);
  const runs = r.json.targets as { target: string; ok: boolean; result: { files: number; sentFiles: number; store: string; tenant: string } }[];
  t.same(runs.map((x) => [x.target, x.ok]), [['offsite-a', true], ['offsite-b', true]], 'both targets succeed');
  t.same(runs.map((x) => x.result.store), ['store-a', 'store-b'], 'each target reached its own store');
  t.ok(runs.every((x) => x.result.tenant === 'acme'), 'the tenant is the certificate\'s name');
  sameFiles(t, s1.dir, repo, 'store-a');
  sameFiles(t, s2.dir, repo, 'store-b');

  const again = await ok(['replicate', '--repo', repo]);
  t.same((again.json.targets as { result: { sentFiles: number; sent: number } }[]).map((x) => [x.result.sentFiles, x.result.sent]), [[0, 0], [0, 0]],
    'a second run sends nothing');

  for (const s of [s1, s2]) {
    const clone = path.join(work, `clone-${s.port}`);
    const c = await ok(['clone', '--repo', clone, '--endpoint', s.endpoint, ...tlsFlags]);
    t.equal(c.json.snapshots, 2, `the clone from ${s.endpoint} has both snapshots`);
    await ok(['check', '--repo', clone, '--read-data']);
    const out = path.join(work, `restored-${s.port}`);
    await ok(['restore', '--repo', clone, 'latest', '--target', out]);
    t.same(compareTrees(src, path.join(out, src)), [], `restored from the clone of ${s.endpoint}: identical to the source`);
  }

  // No plaintext and no key material anywhere in a store's directory.
  const keys = fs.readdirSync(path.join(repo, 'keys')).map((n) => parseKeyFile(n, fs.readFileSync(path.join(repo, 'keys', n))));
  const master = await unlockMasterKey(keys, keys[0]!.repository, { password: env.HOLDFAST_PASSWORD });
  const w = deriveWorkingKeys(master, keys[0]!.repository);
  const secrets = [master, w.encKey, w.idKey, w.gearSecret];
  const needles: [string, Buffer][] = [
    ...markers.map((m) => [`plaintext ${JSON.stringify(m)}`, Buffer.from(m)] as [string, Buffer]),
    ['plaintext "a second snapshot"', Buffer.from('a second snapshot')],
    ['the passphrase', Buffer.from(env.HOLDFAST_PASSWORD)],
    ...secrets.flatMap((k, i) => [[`key ${i} (raw)`, k], [`key ${i} (hex)`, Buffer.from(k.toString('hex'))], [`key ${i} (base64)`, Buffer.from(k.toString('base64'))]] as [string, Buffer][]),
    ['the random data', pseudoRandom('two-0', 4 * MiB).subarray(1000, 1064)],
  ];
  for (const s of [s1, s2]) {
    const all = filesUnder(s.dir);
    t.ok(all.size > 5, `${s.dir} holds files`);
    const names = [...all.keys()].join('\n');
    for (const [what, needle] of needles) {
      const hits = [...all].filter(([, b]) => b.includes(needle)).map(([k]) => k);
      t.same(hits, [], `store ${path.basename(s.dir)}: no ${what} in any file`);
    }
    t.notOk(markers.some((m) => names.includes(m)), `store ${path.basename(s.dir)}: no plaintext file name in its paths`);
  }
  // sanity: the same search finds the markers in the source, so it can fail
  t.ok(fs.readFileSync(path.join(src, 'docs', 'letter.txt')).includes(Buffer.from(markers[0]!)), 'the search finds plaintext where it is');
});

t.test('a target down during a run: the other completes, the down one catches up next run, target status shows the lag between', async (t) => {
  const src = path.join(work, 'src2');
  makeSource(src, 8, 'down');
  const repo = path.join(work, 'repo2');
  await ok(['init', '--repo', repo]);
  await ok(['backup', '--repo', repo, src]);
  const up = await startStore(t, { dir: path.join(work, 'store-up'), pki });
  const downDir = path.join(work, 'store-down');
  const reserved = await startStore(t, { dir: downDir, pki });
  const downPort = reserved.port;
  await reserved.stop();
  await ok(['target', 'add', '--repo', repo, 'up', '--endpoint', up.endpoint, ...tlsFlags]);
  await ok(['target', 'add', '--repo', repo, 'down', '--endpoint', `127.0.0.1:${downPort}`, ...tlsFlags]);

  const r = await cli(['--json', 'replicate', '--repo', repo], env);
  t.equal(r.code, 1, 'replicate exits 1 when a target failed');
  const runs = r.json.targets as { target: string; ok: boolean; error?: { code: string } }[];
  t.same(runs.map((x) => [x.target, x.ok]), [['up', true], ['down', false]], 'the reachable target completes; the other fails');
  t.equal(runs[1]!.error!.code, 'HF_TARGET_UNREACHABLE', 'the down target: HF_TARGET_UNREACHABLE');
  t.match(r.stderr, /down: FAILED HF_TARGET_UNREACHABLE/, 'the admin is told which target failed');
  sameFiles(t, up.dir, repo, 'the up store');

  await new Promise((resolve) => setTimeout(resolve, 2100));
  const st = await ok(['target', 'status', '--repo', repo]);
  const byName = new Map((st.json.targets as { target: string; reachable: string | null; lagSeconds: number; pendingBytes: number; snapshotsPending: number; lastSuccess: string | null; lastError: { code: string } | null }[]).map((x) => [x.target, x]));
  t.equal(byName.get('up')!.lagSeconds, 0, 'up: no lag');
  t.equal(byName.get('up')!.pendingBytes, 0, 'up: nothing pending');
  t.equal(byName.get('up')!.reachable, up.endpoint, 'up: reachable endpoint named');
  const down = byName.get('down')!;
  t.equal(down.reachable, null, 'down: unreachable');
  t.ok(down.lagSeconds >= 2, `down: lag ${down.lagSeconds} s (the snapshot is at least 2 s old and not offsite)`);
  t.equal(down.snapshotsPending, 1, 'down: one snapshot not offsite');
  t.equal(down.pendingBytes, totalBytes(repoFiles(repo)), 'down: every byte pending');
  t.equal(down.lastSuccess, null, 'down: never succeeded');
  t.equal(down.lastError?.code, 'HF_TARGET_UNREACHABLE', 'down: the last error is kept');
  t.match(st.stderr + st.stdout, /./, 'status printed');

  const back = await startStore(t, { dir: downDir, pki, port: downPort });
  const r2 = await ok(['replicate', '--repo', repo]);
  const runs2 = r2.json.targets as { target: string; ok: boolean; result: { sentFiles: number } }[];
  t.same(runs2.map((x) => [x.target, x.ok, x.result.sentFiles > 0]), [['up', true, false], ['down', true, true]],
    'next run: the up target has nothing to send, the down one catches up');
  sameFiles(t, back.dir, repo, 'the store that was down');
  const st2 = await ok(['target', 'status', '--repo', repo, '--target', 'down']);
  t.equal(st2.json.targets[0].lagSeconds, 0, 'down: no lag after catching up');
  t.equal(st2.json.targets[0].pendingBytes, 0, 'down: nothing pending');
});

// One repository of 256 MiB of incompressible data for failover, resume and rate.
const big = path.join(work, 'repo-big');
const bigSrc = path.join(work, 'src-big');
let bigBytes = 0;

t.test('big repository', async (t) => {
  makeSource(bigSrc, 256, 'big');
  await ok(['init', '--repo', big]);
  await ok(['backup', '--repo', big, bigSrc]);
  bigBytes = totalBytes(repoFiles(big));
  t.ok(bigBytes > 256 * MiB, `repository holds ${(bigBytes / MiB).toFixed(1)} MiB`);
});

t.test('failover: the first of two front-ends killed mid-transfer; replication finishes through the second, with at most 5% more bytes than the data', async (t) => {
  const dir = path.join(work, 'store-ha');
  const f1 = await startStore(t, { dir, pki });
  const f2 = await startStore(t, { dir, pki });
  const p1 = new CountingProxy(f1.port);
  const p2 = new CountingProxy(f2.port);
  await p1.listen();
  await p2.listen();
  t.teardown(() => Promise.all([p1.close(), p2.close()]));
  const repo = big;
  await ok(['target', 'add', '--repo', repo, 'ha', '--endpoint', `127.0.0.1:${p1.port},127.0.0.1:${p2.port}`, ...tlsFlags]);
  const child = startCli(['--json', 'replicate', '--repo', repo, '--target', 'ha'], env);
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const done = finish(child);
  let killedAt = 0;
  while (killedAt === 0) {
    await new Promise((resolve) => setTimeout(resolve, 5));
    if (p1.toServer >= bigBytes * 0.4) {
      killedAt = p1.toServer;
      await f1.kill();
    }
    if (child.exitCode !== null) break;
  }
  const r = await done;
  t.ok(killedAt > 0, `front-end 1 killed after ${(killedAt / MiB).toFixed(1)} MiB`);
  t.equal(r.code, 0, `replicate finishes (stderr: ${r.stderr.slice(-400)})`);
  const res = r.json.targets[0].result as { endpoints: string[]; failovers: number; sent: number };
  t.same(res.endpoints, [`127.0.0.1:${p1.port}`, `127.0.0.1:${p2.port}`], 'it moved from the first front-end to the second');
  t.ok(res.failovers >= 1, 'one failover counted');
  t.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${p1.port}.*trying the next endpoint`), 'the admin sees the failover');
  const wire = p1.toServer + p2.toServer;
  t.comment(`data ${(bigBytes / MiB).toFixed(1)} MiB; on the wire ${(wire / MiB).toFixed(1)} MiB (${((wire / bigBytes - 1) * 100).toFixed(2)}% more)`);
  t.ok(wire <= bigBytes * 1.05, 'bytes on the wire are at most 5% more than the data');
  sameFiles(t, dir, repo, 'the store behind both front-ends');
});

t.test('resume: the client killed mid-pack; the next run resumes at the offsets the store holds', async (t) => {
  const dir = path.join(work, 'store-resume');
  const s = await startStore(t, { dir, pki });
  const p = new CountingProxy(s.port);
  await p.listen();
  t.teardown(() => p.close());
  await ok(['target', 'add', '--repo', big, 'resume', '--endpoint', `127.0.0.1:${p.port}`, ...tlsFlags]);
  const child = startCli(['--json', 'replicate', '--repo', big, '--target', 'resume'], env);
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  const done = finish(child);
  while (p.toServer < bigBytes * 0.4 && child.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 5));
  child.kill('SIGKILL');
  const killed = await done;
  t.equal(killed.signal, 'SIGKILL', 'the client was killed mid-transfer');
  await new Promise((resolve) => setTimeout(resolve, 300)); // the store finishes writing what it received
  const partialDir = path.join(dir, 'tenants', 'acme', 'partial');
  const partials = fs.existsSync(partialDir) ? fs.readdirSync(partialDir).map((n) => fs.statSync(path.join(partialDir, n)).size) : [];
  const partialBytes = partials.reduce((a, b) => a + b, 0);
  const complete = totalBytes(tenantFiles(dir, 'acme'));
  t.ok(partials.length > 0 && partialBytes > 0, `the store holds ${partials.length} partial file(s), ${(partialBytes / MiB).toFixed(1)} MiB`);
  t.comment(`after the kill: ${(complete / MiB).toFixed(1)} MiB complete, ${(partialBytes / MiB).toFixed(1)} MiB partial`);

  p.reset();
  const r = await ok(['replicate', '--repo', big, '--target', 'resume']);
  const res = r.json.targets[0].result as { resumed: number; sent: number; present: number };
  t.equal(res.resumed, partialBytes, 'the run resumed every partial file at the offset the store had');
  const owed = bigBytes - complete - partialBytes;
  t.equal(res.sent, owed, 'the client sent exactly the bytes the store lacked');
  t.comment(`second run: owed ${(owed / MiB).toFixed(2)} MiB, on the wire ${(p.toServer / MiB).toFixed(2)} MiB`);
  t.ok(p.toServer >= owed, 'the wire carried at least what was owed');
  t.ok(p.toServer <= owed * 1.02 + 256 * 1024, 'and not much more: nothing stored was sent again');
  sameFiles(t, dir, big, 'the resumed store');
});

t.test('rate: with --rate 20MiB/s the average over more than 10 s is within 5% and no second exceeds 1.5x', async (t) => {
  const s = await startStore(t, { dir: path.join(work, 'store-rate'), pki });
  const p = new CountingProxy(s.port);
  await p.listen();
  t.teardown(() => p.close());
  await ok(['target', 'add', '--repo', big, 'slow', '--endpoint', `127.0.0.1:${p.port}`, '--rate', '20MiB/s', ...tlsFlags]);
  await ok(['replicate', '--repo', big, '--target', 'slow']);
  const seconds = (p.lastByteAt - p.firstByteAt) / 1000;
  const avg = p.toServer / seconds;
  const rate = 20 * MiB;
  t.comment(`${(p.toServer / MiB).toFixed(1)} MiB in ${seconds.toFixed(2)} s: ${(avg / MiB).toFixed(2)} MiB/s; per second: ${p.perSecond.map((b) => (b / MiB).toFixed(1)).join(' ')}`);
  t.ok(seconds >= 10, 'measured over at least 10 s');
  t.ok(Math.abs(avg / rate - 1) <= 0.05, `average ${(avg / MiB).toFixed(2)} MiB/s is within 5% of 20 MiB/s`);
  const worst = Math.max(...p.perSecond);
  t.ok(worst <= rate * 1.5, `busiest second ${(worst / MiB).toFixed(2)} MiB ≤ 1.5 × the rate`);
  sameFiles(t, s.dir, big, 'the rate-limited store');
});

t.test('restore --from-target reads straight from the store; a seed ships the first copy and replication then sends only the rest', async (t) => {
  const src = path.join(work, 'src3');
  makeSource(src, 8, 'seed');
  const repo = path.join(work, 'repo3');
  await ok(['init', '--repo', repo]);
  await ok(['backup', '--repo', repo, src]);
  const seed = path.join(work, 'seed-disk');
  await ok(['seed', 'export', '--repo', repo, '--to', seed]);
  const dir = path.join(work, 'store-seed');
  const imp = await ok(['store', 'import', '--dir', dir, '--tenant', 'acme', '--from', seed]);
  t.equal(imp.json.files, repoFiles(repo).size, 'the seed imports every file');
  fs.writeFileSync(path.join(src, 'docs', 'new.txt'), pseudoRandom('after-seed', 3 * MiB));
  await ok(['backup', '--repo', repo, src]);
  const s = await startStore(t, { dir, pki });
  await ok(['target', 'add', '--repo', repo, 'seeded', '--endpoint', s.endpoint, ...tlsFlags]);
  const before = new Set(repoFiles(seed).keys());
  const after = repoFiles(repo);
  const newBytes = [...after].filter(([k]) => !before.has(k)).reduce((n, [, b]) => n + b.length, 0);
  const r = await ok(['replicate', '--repo', repo]);
  const res = r.json.targets[0].result as { sent: number; present: number };
  t.equal(res.sent, newBytes, 'replication after the seed sends only what came after it');
  t.equal(res.present, before.size - 1 /* the manifest */, 'everything on the seed is already there');
  sameFiles(t, dir, repo, 'the seeded store');

  const out = path.join(work, 'from-target');
  await ok(['restore', '--repo', repo, '--from-target', 'seeded', 'latest', '--target', out]);
  t.same(compareTrees(src, path.join(out, src)), [], 'restore --from-target: identical to the source');
});

t.test('bad input gets a coded error and loses nothing: quota, wrong passphrase on clone, bad target flags, pki misuse', async (t) => {
  const src = path.join(work, 'src4');
  makeSource(src, 4, 'quota');
  const repo = path.join(work, 'repo4');
  await ok(['init', '--repo', repo]);
  await ok(['backup', '--repo', repo, src]);
  const s = await startStore(t, { dir: path.join(work, 'store-quota'), pki, quota: '1MiB' });
  await ok(['target', 'add', '--repo', repo, 'small', '--endpoint', s.endpoint, ...tlsFlags]);
  const r = await cli(['--json', 'replicate', '--repo', repo], env);
  t.equal(r.code, 1, 'replicate fails');
  t.equal(r.json.targets[0].error.code, 'HF_STORE_QUOTA_EXCEEDED', 'with HF_STORE_QUOTA_EXCEEDED');
  t.match(r.json.targets[0].error.message, /quota/, 'the message says what to do about the quota');
  const st = await ok(['target', 'status', '--repo', repo]);
  t.equal(st.json.targets[0].lastError.code, 'HF_STORE_QUOTA_EXCEEDED', 'target status shows the last error');
  t.ok(st.json.targets[0].pendingBytes > 0, 'and what is still pending');

  // A wrong passphrase is found before anything is downloaded.
  const full = await startStore(t, { dir: path.join(work, 'store-full'), pki });
  await ok(['target', 'add', '--repo', repo, 'full', '--endpoint', full.endpoint, ...tlsFlags]);
  await ok(['replicate', '--repo', repo, '--target', 'full']);
  const clone = path.join(work, 'clone-wrong');
  const wrong = await cli(['--json', 'clone', '--repo', clone, '--endpoint', full.endpoint, ...tlsFlags], { ...env, HOLDFAST_PASSWORD: 'wrong' });
  t.equal(wrong.code, 1, 'clone with a wrong passphrase fails');
  t.equal(wrong.json.error.code, 'HF_WRONG_PASSWORD', 'with HF_WRONG_PASSWORD');
  t.notOk(fs.existsSync(clone), 'and creates nothing');
  // An appliance whose tenant holds nothing is told so.
  await issueAppliance('stranger');
  const stranger = pki.cert('stranger');
  const none = await cli(['--json', 'clone', '--repo', path.join(work, 'clone-none'), '--endpoint', full.endpoint, '--ca', pki.ca, '--cert', stranger.cert, '--key', stranger.key], env);
  t.equal(none.code, 1, 'clone of an empty tenant fails');
  t.equal(none.json.error.code, 'HF_STORE_TENANT_NOT_FOUND', `with HF_STORE_TENANT_NOT_FOUND (${none.json.error.message})`);

  const bad = [
    [['target', 'add', '--repo', repo, 'x', '--endpoint', 'nohostport', ...tlsFlags], /HOST:PORT/],
    [['target', 'add', '--repo', repo, 'x', '--endpoint', s.endpoint, '--rate', '20 parsecs', ...tlsFlags], /rate/],
    [['target', 'add', '--repo', repo, 'x', '--endpoint', s.endpoint, '--window', 'Funday 08:00-18:00=1MiB/s', ...tlsFlags], /./],
    [['target', 'add', '--repo', repo, 'x', '--endpoint', s.endpoint, '--ca', pki.ca, '--cert', path.join(work, 'missing.crt'), '--key', acme.key], /HF_PKI_NOT_FOUND/],
    [['target', 'add', '--repo', repo, 'full', '--endpoint', s.endpoint, ...tlsFlags], /HF_TARGET_EXISTS/],
    [['replicate', '--repo', repo, '--target', 'nope'], /HF_TARGET_NOT_FOUND/],
    [['pki', 'issue', '--dir', pki.dir, '--name', 'acme', '--kind', 'appliance'], /HF_PKI_EXISTS/],
    [['pki', 'issue', '--dir', pki.dir, '--name', 'Bad Name', '--kind', 'appliance'], /HF_PKI_INVALID/],
    [['pki', 'issue', '--dir', pki.dir, '--name', 'y', '--kind', 'toaster'], /appliance or store/],
  ] as const;
  for (const [args, why] of bad) {
    const b = await cli([...args], env);
    t.ok(b.code === 1 || b.code === 2, `holdfast ${args.slice(0, 2).join(' ')} … ${args.at(-1)}: refused (exit ${b.code})`);
    t.match(b.stderr, why, `  and says why: ${b.stderr.trim().split('\n')[0]}`);
  }
  t.same((await ok(['target', 'list', '--repo', repo])).json.targets.map((x: { name: string }) => x.name), ['small', 'full'], 'no bad target was recorded');
});

async function issueAppliance(name: string): Promise<void> {
  const r = await cli(['pki', 'issue', '--dir', pki.dir, '--name', name, '--kind', 'appliance'], env);
  if (r.code !== 0) throw new Error(r.stderr);
}

t.test('spread: clients start at a random endpoint of the store, so front-ends share the load', async (t) => {
  const { TargetClient } = await import('../appliance/replication/index.ts');
  const dir = path.join(work, 'store-spread');
  const f1 = await startStore(t, { dir, pki });
  const f2 = await startStore(t, { dir, pki });
  const tls = { ca: fs.readFileSync(pki.ca), cert: fs.readFileSync(acme.cert), key: fs.readFileSync(acme.key) };
  const endpoints = [{ host: '127.0.0.1', port: f1.port }, { host: '127.0.0.1', port: f2.port }];
  const used = new Map<string, number>();
  for (let i = 0; i < 24; i++) {
    const c = new TargetClient({ name: 'spread', endpoints, tls, spread: true });
    const conn = await c.connection();
    used.set(`${conn.endpoint.port}`, (used.get(`${conn.endpoint.port}`) ?? 0) + 1);
    c.close();
  }
  t.comment(`24 clients: ${[...used].map(([p, n]) => `${p}: ${n}`).join(', ')}`);
  t.equal(used.size, 2, 'both front-ends served clients (a fixed order would use only the first: chance of a false failure 2^-23)');
  const ordered = new TargetClient({ name: 'ordered', endpoints, tls });
  t.equal((await ordered.connection()).endpoint.port, f1.port, 'without spread, the first endpoint is used');
  ordered.close();
});

t.test('a time window sets a target\'s rate, and --global-rate caps all targets together', async (t) => {
  const src = path.join(work, 'src5');
  makeSource(src, 12, 'window');
  const repo = path.join(work, 'repo5');
  await ok(['init', '--repo', repo]);
  await ok(['backup', '--repo', repo, src]);
  const data = totalBytes(repoFiles(repo));
  const sa = await startStore(t, { dir: path.join(work, 'store-wa'), pki });
  const sb = await startStore(t, { dir: path.join(work, 'store-wb'), pki });
  const pa = new CountingProxy(sa.port);
  const pb = new CountingProxy(sb.port);
  await pa.listen();
  await pb.listen();
  t.teardown(() => Promise.all([pa.close(), pb.close()]));
  // A window that matches every day and hour: the target's rate is the window's.
  await ok(['target', 'add', '--repo', repo, 'windowed', '--endpoint', `127.0.0.1:${pa.port}`, '--window', '00:00-24:00=3MiB/s', ...tlsFlags]);
  await ok(['target', 'add', '--repo', repo, 'open', '--endpoint', `127.0.0.1:${pb.port}`, ...tlsFlags]);
  const started = performance.now();
  await ok(['replicate', '--repo', repo, '--global-rate', '5MiB/s']);
  const first = Math.min(pa.firstByteAt, pb.firstByteAt);
  const last = Math.max(pa.lastByteAt, pb.lastByteAt);
  const both = (pa.toServer + pb.toServer) / ((last - first) / 1000);
  const windowed = pa.toServer / ((pa.lastByteAt - pa.firstByteAt) / 1000);
  t.comment(`data ${(data / MiB).toFixed(1)} MiB per target; both together ${(both / MiB).toFixed(2)} MiB/s; windowed target ${(windowed / MiB).toFixed(2)} MiB/s; ${((performance.now() - started) / 1000).toFixed(1)} s`);
  t.ok(both <= 5 * MiB * 1.05, 'both targets together stay within the global 5 MiB/s');
  t.ok(both >= 5 * MiB * 0.75, 'and use most of it');
  t.ok(windowed <= 3 * MiB * 1.05, 'the windowed target stays within its window\'s 3 MiB/s');
  sameFiles(t, sa.dir, repo, 'windowed store');
  sameFiles(t, sb.dir, repo, 'open store');
});
