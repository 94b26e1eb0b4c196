import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

import type { Test } from 'tap';

import { startLifeline } from './lifeline.ts';
import { freePort } from './sshd.ts';
import { tmpDir } from './tmp.ts';

const run = promisify(execFile);

/** A single-node Ceph cluster (one monitor, one OSD, radosgw) on loopback, for one test file. */
export interface Ceph {
  /** http://127.0.0.1:PORT of radosgw's S3 API (path-style, region us-east-1). */
  endpoint: string;
  port: number;
  accessKeyId: string;
  secretAccessKey: string;
  dir: string;
  /** Pids of ceph-mon, ceph-osd and radosgw. */
  pids: number[];
  stop(): Promise<void>;
}

export interface CephOptions {
  /** memstore (RAM, fastest; default) or bluestore on a sparse file (for more than a few hundred MB). */
  objectStore?: 'memstore' | 'bluestore';
  /** memstore's size (default 1 GiB). */
  memstoreBytes?: number;
}

const TOOLS = ['ceph-mon', 'ceph-osd', 'radosgw', 'ceph', 'ceph-authtool', 'monmaptool', 'radosgw-admin'];

/** Whether the Ceph daemons are installed (scripts/setup.sh installs ceph-mon, ceph-osd and radosgw). */
export function cephInstalled(): boolean {
  return TOOLS.every((t) => ['/usr/bin', '/usr/sbin'].some((d) => fs.existsSync(path.join(d, t))));
}

async function until(what: string, seconds: number, probe: () => Promise<boolean>, log: () => string): Promise<void> {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`Ceph: ${what} did not happen within ${seconds} s\n${log()}`);
    await sleep(250);
  }
}

/**
 * Starts ceph-mon, one ceph-osd and radosgw as this user on free loopback
 * ports (auth none, pool size 1, no systemd, no block device), creates an S3
 * user, and kills the three daemons by pid when the test ends; a lifeline
 * kills them too if the test process dies without its teardown.
 */
export async function startCeph(t: Test, o: CephOptions = {}): Promise<Ceph> {
  const dir = tmpDir(t, 'hf-ceph-');
  const [monV2, monV1, rgwPort] = [await freePort(), await freePort(), await freePort()];
  const objectStore = o.objectStore ?? 'memstore';
  for (const d of ['run', 'log', 'mon/ceph-a', 'osd/ceph-0', 'rgw', 'crash']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  const conf = path.join(dir, 'ceph.conf');
  const fsid = randomUUID();
  fs.writeFileSync(conf, `[global]
fsid = ${fsid}
mon initial members = a
mon host = [v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]
public network = 127.0.0.0/8
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = ${dir}/$cluster.$name.keyring
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
log to stderr = false
err to stderr = true
crash dir = ${dir}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail warn = 2
mon data avail crit = 1
# a proposal every 50 ms, not every second: OSD boot and pool creation in a few seconds
paxos propose interval = 0.05

[mon]
mon data = ${dir}/mon/$cluster-$id

[osd]
osd data = ${dir}/osd/$cluster-$id
osd objectstore = ${objectStore}
memstore device bytes = ${o.memstoreBytes ?? 1 << 30}
bluestore block size = ${8 << 30}
osd memory target = 1073741824
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort} tcp_nodelay=1
rgw thread pool size = 64
rgw data = ${dir}/rgw
rgw enable usage log = false
rgw dns name = localhost
# tails of deleted objects go to garbage collection after 30 s, not 2 h
rgw gc obj min wait = 30
rgw gc processor period = 30
# auth none cannot do radosgw's default secure mode to the monitor
ms mon client mode = secure crc
`);
  const env = { ...process.env, CEPH_CONF: conf };
  const daemons: { name: string; child: ChildProcess }[] = [];
  const logs = () => ['mon.a', 'osd.0', 'client.rgw.a'].map((n) => {
    const f = path.join(dir, 'log', `${n}.log`);
    return fs.existsSync(f) ? `--- ${n}.log (end)\n${fs.readFileSync(f, 'utf8').slice(-2000)}` : '';
  }).join('\n');
  const daemon = (name: string, cmd: string, args: string[]) => {
    const out = fs.openSync(path.join(dir, 'log', `${name}.out`), 'a');
    const child = spawn(cmd, args, { env, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    daemons.push({ name, child });
    fs.writeFileSync(path.join(dir, 'run', `${name}.fgpid`), String(child.pid));
    return child;
  };
  const lifeline = startLifeline(dir, 'holdfast-ceph-lifeline', [
    'read _ || :',
    'for f in "$1"/run/*.fgpid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done',
  ], [dir]);
  const stop = async () => {
    lifeline.cut();
    for (const d of [...daemons].reverse()) {
      if (d.child.exitCode !== null || d.child.signalCode !== null) continue;
      const exited = new Promise((r) => d.child.once('exit', r));
      d.child.kill('SIGTERM');
      if (await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]) === false) {
        d.child.kill('SIGKILL');
        await exited;
      }
    }
  };
  t.teardown(stop);

  const tool = (cmd: string, args: string[]) => run(cmd, args, { env, maxBuffer: 16 << 20 });
  const monKeyring = path.join(dir, 'ceph.mon.a.keyring');
  await tool('ceph-authtool', ['--create-keyring', monKeyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
  await tool('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]`, path.join(dir, 'monmap')]);
  await tool('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', path.join(dir, 'monmap'), '--keyring', monKeyring]);
  daemon('mon.a', 'ceph-mon', ['-f', '-i', 'a']);
  await until('the monitor answering', 60, async () => { await tool('ceph', ['--connect-timeout', '5', '-s']); return true; }, logs);

  const osdUuid = randomUUID();
  const osdId = (await tool('ceph', ['osd', 'new', osdUuid])).stdout.trim();
  await tool('ceph-osd', ['-i', osdId, '--mkfs', '--mkkey', '--osd-uuid', osdUuid, '--no-mon-config']);
  daemon(`osd.${osdId}`, 'ceph-osd', ['-f', '-i', osdId]);
  await until('the OSD coming up', 60, async () => (await tool('ceph', ['osd', 'stat'])).stdout.includes('1 up'), logs);

  daemon('rgw.a', 'radosgw', ['-f', '-n', 'client.rgw.a']);
  await until('radosgw answering HTTP', 120, () => new Promise<boolean>((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: rgwPort, path: '/', timeout: 2000 }, (res) => { res.resume(); resolve(true); });
    req.on('error', () => resolve(false));
    req.on('timeout', () => { req.destroy(); resolve(false); });
  }), logs);
  const accessKeyId = 'holdfast-test';
  const secretAccessKey = randomUUID().replace(/-/g, '');
  await tool('radosgw-admin', ['user', 'create', '--uid=holdfast-test', '--display-name=Holdfast test', `--access-key=${accessKeyId}`, `--secret-key=${secretAccessKey}`]);
  return {
    endpoint: `http://127.0.0.1:${rgwPort}`, port: rgwPort, accessKeyId, secretAccessKey, dir,
    pids: daemons.map((d) => d.child.pid!),
    stop,
  };
}
