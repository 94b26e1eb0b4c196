// `npm run bench -- sources`: pulling the tree of real files (>= 1 GB, the
// same data as the `tree` benchmark) from servers on loopback. Holdfast's full
// backup through SMB 3.1.1 (mandatory signing, required encryption) against
// `smbclient` recursive mget of the same share, and through SFTP against
// `sftp -r`; then a second, unchanged backup of each against the first.
import fs from 'node:fs';
import path from 'node:path';

import { smbclientArgv, startSamba } from '../helpers/samba.ts';
import { startSshd } from '../helpers/sshd.ts';
import { prepareTree, treeStats } from './data.ts';
import { emit, heading, mib, note, passMark, ratio, round, say, secs, table } from './report.ts';
import { type TimedResult, BenchError, mountTarget, removeTree, run, timed, unmountTarget, teardownScope, warmPageCache } from './run.ts';
import { HOLDFAST_BIN, parseHoldfastBackup } from './tools.ts';
import { V8_FLAGS } from '../../appliance/cli/runtime.mjs';

interface Protocol {
  name: 'smb' | 'sftp';
  peer: string;
  /** The peer tool copying the whole tree into dest. */
  peerCommand(dest: string): { file: string; args: string[]; cwd?: string };
  url: string;
  flags: string[];
  env: Record<string, string>;
}

interface Measured {
  peer: TimedResult;
  first: TimedResult;
  second: TimedResult;
}

export interface SourcesSummary {
  files: number;
  bytes: number;
  ratios: Record<string, number>;
  pass: Record<string, boolean>;
}

function holdfast(args: string[], env: Record<string, string>): { file: string; args: string[]; env: NodeJS.ProcessEnv } {
  return { file: process.execPath, args: [...V8_FLAGS, HOLDFAST_BIN, ...args], env: { ...process.env, ...env } };
}

function measure(p: Protocol, work: string, data: string): Measured {
  const dir = path.join(work, 'sources', p.name);
  removeTree(dir);
  fs.mkdirSync(dir, { recursive: true });
  // The peer writes its copy to tmpfs, so that it pays for no disk writes.
  const target = mountTarget(path.join(dir, 'copy'));
  if (!target.tmpfs) say(`NOTE: ${p.peer}: ${target.note}`);
  let peer: TimedResult;
  let peerFiles = 0;
  try {
    note(`sources: ${p.peer}`);
    const c = p.peerCommand(target.path);
    warmPageCache(data);
    // smbclient exits 1 when any file failed; what failed is printed below and
    // the bytes it copied are counted, so the comparison stays honest.
    peer = timed({ ...c, cwd: c.cwd ?? target.path, ok: [0, 1] });
    const copied = treeStats(target.path);
    peerFiles = copied.files;
    const errors = `${peer.stdout}\n${peer.stderr}`.split('\n').filter((l) => /NT_STATUS_|\berror\b|failed|denied/i.test(l) && !/^(getting file|Retrieving|Fetching) /.test(l));
    say(`${p.peer}: exit ${peer.status}, copied ${copied.files} files, ${mib(copied.bytes)}` +
      (errors.length ? `; ${errors.length} error line(s), first: ${errors.slice(0, 3).join(' | ')}` : ''));
    emit({ bench: 'sources', protocol: p.name, op: 'peer_copy', exit: peer.status, files: copied.files, bytes: copied.bytes, errors: errors.slice(0, 20) });
  } finally {
    unmountTarget(target);
  }
  const env = { ...p.env, HOLDFAST_PASSWORD: 'bench', HOLDFAST_CACHE_DIR: path.join(dir, 'cache') };
  const repo = ['--repo', path.join(dir, 'repo')];
  run(holdfast(['init', ...repo, '-q'], env));
  // Exit 3: done, with warnings (files the server would not hand out; the peer gets none of them either).
  const backup = () => timed({ ...holdfast(['backup', ...repo, '--json', ...p.flags, p.url], env), ok: [0, 3] });
  note(`sources: holdfast ${p.name} first backup`);
  warmPageCache(data);
  const first = backup();
  note(`sources: holdfast ${p.name} second (unchanged) backup`);
  warmPageCache(path.join(dir, 'repo'));
  const second = backup();
  const a = parseHoldfastBackup(first.stdout);
  const b = parseHoldfastBackup(second.stdout);
  // Servers differ in what they show: Samba follows symlinks (files appear
  // twice), SFTP lists them as links. Both tools read what the server shows.
  say(`holdfast ${p.name}: exit ${first.status}, ${a.files} files, ${mib(a.bytesRead)} read` +
    (first.status === 3 ? `; warnings: ${first.stderr.trim().split('\n').slice(0, 3).join(' | ')}` : ''));
  if (a.files < peerFiles) throw new BenchError(`holdfast ${p.name}: backed up ${a.files} files, ${p.peer} copied ${peerFiles}`);
  if (b.bytesRead !== 0) throw new BenchError(`holdfast ${p.name}: the unchanged backup read ${b.bytesRead} bytes`);
  if (!process.env.HOLDFAST_BENCH_KEEP) removeTree(dir);
  return { peer, first, second };
}

function middle(values: number[]): number {
  const v = [...values].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
}

export async function benchSources(work: string): Promise<SourcesSummary> {
  heading('sources: pulling the tree through SMB 3.1.1 (signed, encrypted) and SFTP');
  const { root: data } = prepareTree(work);
  const stats = treeStats(data);
  say(`data: ${data}: ${stats.files} files, ${stats.dirs} directories, ${stats.symlinks} symlinks, ${mib(stats.bytes)} in regular files`);
  if (stats.bytes < 1e9) throw new BenchError(`the tree data holds only ${stats.bytes} bytes; remove ${work} to prepare it again`);
  const scope = teardownScope();
  const results = new Map<string, Measured[]>();
  try {
    // Names with ':' (man pages such as Dpkg::Version.3perl.gz) are illegal on
    // Windows; served as a NAS or macOS server serves them (vfs_catia), both
    // smbclient and holdfast can open every file.
    const smb = await startSamba(scope.t, { profile: 'strict', shares: { bench: data }, names: 'sfm' });
    const sshd = await startSshd(scope.t);
    const protocols: Protocol[] = [
      {
        name: 'smb',
        peer: 'smbclient mget',
        peerCommand: () => ({ file: 'smbclient', args: [...smbclientArgv(smb, { share: 'bench' }), '-c', 'recurse; prompt; mget *'] }),
        url: `smb://${smb.user}@127.0.0.1:${smb.port}/bench`,
        flags: [],
        env: { HOLDFAST_SOURCE_PASSWORD: smb.password },
      },
      {
        name: 'sftp',
        peer: 'sftp -r',
        peerCommand: (dest) => ({
          file: 'sftp',
          args: ['-q', '-r', '-P', String(sshd.port), '-i', sshd.identityFile, '-o', 'BatchMode=yes',
            '-o', `UserKnownHostsFile=${sshd.knownHostsFile}`, '-o', 'StrictHostKeyChecking=yes',
            `${sshd.user}@127.0.0.1:${data}`, dest],
        }),
        url: `sftp://${sshd.user}@127.0.0.1:${sshd.port}${data}`,
        flags: ['--identity', sshd.identityFile, '--known-hosts', sshd.knownHostsFile],
        env: {},
      },
    ];
    const rounds = Math.max(1, Number(process.env.HOLDFAST_BENCH_ROUNDS ?? 3));
    for (let r = 1; r <= rounds; r++) {
      note(`sources: round ${r} of ${rounds}`);
      for (const p of protocols) {
        const m = measure(p, work, data);
        results.set(p.name, [...(results.get(p.name) ?? []), m]);
        for (const [op, x] of Object.entries(m)) {
          emit({ bench: 'sources', protocol: p.name, op: op === 'peer' ? p.peer : `holdfast_${op}`, round: r, seconds: x.seconds, rss_kib: x.rssKib });
        }
      }
    }
    say(`(medians of ${rounds} rounds)`);
    const med = (name: string, op: keyof Measured) => round(middle(results.get(name)!.map((m) => m[op].seconds)), 2);
    const rows: string[][] = [];
    const ratios: Record<string, number> = {};
    for (const p of protocols) {
      const peer = med(p.name, 'peer');
      const first = med(p.name, 'first');
      const second = med(p.name, 'second');
      rows.push([p.name, `${p.peer}: ${secs(peer)} (${(stats.bytes / peer / 1e6).toFixed(0)} MB/s)`,
        `${secs(first)} (${(stats.bytes / first / 1e6).toFixed(0)} MB/s)`, secs(second)]);
      ratios[`${p.name}_vs_peer`] = round(peer / first, 3);
      ratios[`${p.name}_second_speedup`] = round(first / second, 3);
    }
    say('');
    table(['protocol', 'peer copy', 'holdfast first backup', 'holdfast unchanged'], rows);
    const goals: [string, number][] = [['smb_vs_peer', 1], ['sftp_vs_peer', 1], ['smb_second_speedup', 3], ['sftp_second_speedup', 3]];
    const pass = Object.fromEntries(goals.map(([k, min]) => [k, ratios[k]! >= min]));
    say('');
    table(['ratio', 'value', 'target', 'result'], goals.map(([k, min]) => [k, ratio(ratios[k]!), `>= ${min}`, passMark(pass[k]!)]));
    say('(vs_peer: peer seconds / holdfast first-backup seconds; second_speedup: first / unchanged backup seconds)');
    emit({ bench: 'sources', op: 'ratios', ratios, pass });
    return { files: stats.files, bytes: stats.bytes, ratios, pass };
  } finally {
    await scope.close();
  }
}
