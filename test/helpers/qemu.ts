// A QEMU VM on the tap0 of a helpers/netns.ts LAN, for tests that boot from
// the network and then from disk.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Test } from 'tap';

import type { Lan } from './netns.ts';

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS.fd';
/** The VM's MAC unless given: stable across boots, so the DHCP lease and logs name the same box. */
export const VM_MAC = '52:54:00:12:34:56';

export interface VmOptions {
  lan: Lan;
  /** qcow2 or raw disk image (by its magic), created by the caller. */
  disk: string;
  /**
   * Serial console log. Appended to (a second boot may pass the same file);
   * waitSerial only reads what this VM wrote.
   */
  serialLog: string;
  memoryMiB?: number;
  /** OVMF instead of SeaBIOS. */
  uefi?: boolean;
  /**
   * UEFI variable store (boot entries, boot order); default DISK.OVMF_VARS.fd,
   * so a second boot of the same disk keeps the NVRAM. Created from
   * OVMF_VARS.fd when missing.
   */
  nvram?: string;
  name?: string;
  mac?: string;
  /**
   * false: no option ROM on the NIC (romfile=), so the firmware's own network
   * boot runs: with OVMF its PXE client, which is not iPXE (the path where
   * the boot server sends ipxe.efi by TFTP first). Default true: QEMU's NIC
   * ROM, which is iPXE (BIOS and UEFI). SeaBIOS has no PXE of its own.
   */
  nicRom?: boolean;
  /** -cpu (default host,-arch-capabilities with KVM, max with TCG). */
  cpu?: string;
  /** More QEMU arguments. */
  extraArgs?: string[];
}

export interface Vm {
  pid: number;
  name: string;
  serialLog: string;
  qmpSocket: string;
  /** The NVRAM file (UEFI only). */
  nvram?: string;
  /** Whether KVM is used (else TCG, much slower). */
  kvm: boolean;
  /** Resolves when QEMU exits. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /**
   * Waits until the serial output matches `re`, searching from the end of
   * the previous match (the first call: from this VM's start), so steps are
   * waited for in order. Rejects with `step "STEP" did not happen within N s;
   * last serial lines: …` on timeout, or when QEMU exits first.
   */
  waitSerial(re: RegExp, timeoutMs: number, step: string): Promise<RegExpMatchArray>;
  /** This VM's serial output so far. */
  serialText(): string;
  /** The last `n` lines of the serial output, escape sequences removed. */
  lastSerialLines(n?: number): string;
  /** One QMP command (after capabilities negotiation); resolves with its return value. */
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** ACPI power button; waits up to timeoutMs (default 60 s) for QEMU to exit, else SIGKILL. Resolves true if it shut down by itself. */
  powerdown(timeoutMs?: number): Promise<boolean>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
}

/**
 * Whether QEMU can use KVM here, and why not. /dev/kvm is not enough: on a
 * machine that is itself a VM without nested hardware virtualisation,
 * /dev/kvm may be PVM (kvm_pvm: page-table based, for guests built for it),
 * which opens fine but triple-faults a normal guest (SeaBIOS runs, then iPXE
 * or Linux resets the VM); KVM works when kvm_intel or kvm_amd is loaded.
 * HOLDFAST_QEMU_ACCEL=kvm|tcg overrides.
 */
export function qemuAccel(): { kvm: boolean; reason: string } {
  const forced = process.env.HOLDFAST_QEMU_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return { kvm: forced === 'kvm', reason: `HOLDFAST_QEMU_ACCEL=${forced}` };
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
  } catch (err) {
    return { kvm: false, reason: `/dev/kvm is not usable (${(err as NodeJS.ErrnoException).code ?? String(err)})` };
  }
  if (fs.existsSync('/sys/module/kvm_intel') || fs.existsSync('/sys/module/kvm_amd')) return { kvm: true, reason: 'kvm_intel/kvm_amd' };
  if (fs.existsSync('/sys/module/kvm_pvm')) return { kvm: false, reason: '/dev/kvm is PVM (kvm_pvm, no hardware virtualisation): it cannot run firmware or a stock kernel' };
  return { kvm: true, reason: '/dev/kvm' };
}

function isQcow2(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(4);
    fs.readSync(fd, b, 0, 4, 0);
    return b.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb]));
  } finally {
    fs.closeSync(fd);
  }
}

// CSI and other escape sequences that OVMF and iPXE write to the console
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78c]/g;

/** Starts qemu-system-x86_64 inside the LAN namespace on tap0; killed by pid at teardown. */
export async function startVm(t: Test, o: VmOptions): Promise<Vm> {
  const name = o.name ?? 'holdfast-vm';
  if (!fs.existsSync(o.disk)) throw new Error(`disk ${o.disk} does not exist (the caller creates it)`);
  const accel = qemuAccel();
  const kvm = accel.kvm;
  if (!kvm) t.comment(`warning: no KVM (${accel.reason}): QEMU runs with TCG, several times slower`);
  fs.mkdirSync(path.dirname(o.serialLog), { recursive: true });
  if (!fs.existsSync(o.serialLog)) fs.writeFileSync(o.serialLog, '');
  const serialStart = fs.statSync(o.serialLog).size;
  const qmpSocket = path.join(o.lan.dir, `qmp-${name}-${Date.now()}.sock`);

  let nvram: string | undefined;
  const firmware: string[] = [];
  if (o.uefi) {
    nvram = o.nvram ?? `${o.disk}.OVMF_VARS.fd`;
    if (!fs.existsSync(nvram)) fs.copyFileSync(OVMF_VARS, nvram);
    firmware.push(
      '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`,
      '-drive', `if=pflash,format=raw,unit=1,file=${nvram}`,
    );
  }
  const args = [
    '-name', name,
    '-machine', 'q35',
    // -arch-capabilities: where the KVM does not offer MSR 0x10a (seen on
    // nested AMD EPYC) QEMU aborts at start for "host"; a guest loses
    // nothing it needs without it
    ...(kvm ? ['-enable-kvm', '-cpu', o.cpu ?? 'host,-arch-capabilities'] : ['-accel', 'tcg,thread=multi', '-cpu', o.cpu ?? 'max']),
    '-smp', '2',
    '-m', String(o.memoryMiB ?? 2048),
    ...firmware,
    // no window, no monitor; the serial console goes to the log file (and
    // -nographic, unlike -display none, makes SeaBIOS copy its text console,
    // where iPXE prints, to the serial port)
    '-nographic',
    '-monitor', 'none',
    '-chardev', `file,id=serial0,path=${o.serialLog},append=on`,
    '-serial', 'chardev:serial0',
    '-qmp', `unix:${qmpSocket},server=on,wait=off`,
    // boot order: disk first, then the network (bootindex works for SeaBIOS and OVMF)
    '-drive', `file=${o.disk},if=none,id=disk0,format=${isQcow2(o.disk) ? 'qcow2' : 'raw'},cache=writeback,discard=unmap`,
    '-device', 'virtio-blk-pci,drive=disk0,bootindex=0',
    '-netdev', `tap,id=n0,ifname=${o.lan.tap},script=no,downscript=no`,
    '-device', `virtio-net-pci,netdev=n0,mac=${o.mac ?? VM_MAC},bootindex=1${o.nicRom === false ? ',romfile=' : ''}`,
    ...(o.extraArgs ?? []),
  ];
  const child: ChildProcess = o.lan.exec('lan', 'qemu-system-x86_64', args);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString('utf8')).slice(-8000); });
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { exitInfo = { code, signal }; resolve(exitInfo); });
  });
  const pid = child.pid!;
  const onExit = () => { if (!exitInfo) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } };
  process.on('exit', onExit);
  void exited.then(() => process.off('exit', onExit));

  const kill = async () => {
    if (!exitInfo) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await exited;
    }
  };
  t.teardown(kill);

  const serialText = () => {
    try {
      const fd = fs.openSync(o.serialLog, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        const b = Buffer.alloc(Math.max(0, size - serialStart));
        fs.readSync(fd, b, 0, b.length, serialStart);
        return b.toString('utf8');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return '';
    }
  };
  const lastSerialLines = (n = 25) => serialText().replace(ESCAPES, '').replace(/\r/g, '\n').split('\n').filter((l) => l.trim() !== '').slice(-n).join('\n');

  let cursor = 0;
  const waitSerial = async (re: RegExp, timeoutMs: number, step: string): Promise<RegExpMatchArray> => {
    const pattern = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const done = exitInfo !== undefined; // read once more after an exit
      const text = serialText().slice(cursor);
      const m = pattern.exec(text);
      if (m) {
        cursor += m.index + m[0].length;
        return m;
      }
      if (done) {
        throw new Error(`step "${step}" did not happen: QEMU exited first (${exitInfo!.code ?? exitInfo!.signal})${stderr.trim() ? `; qemu: ${stderr.trim()}` : ''}; last serial lines:\n${lastSerialLines()}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`step "${step}" did not happen within ${Math.round(timeoutMs / 1000)} s; last serial lines:\n${lastSerialLines()}`);
      }
      await Promise.race([sleep(200), exited]);
    }
  };

  const qmp = async (command: string, cmdArgs?: Record<string, unknown>): Promise<unknown> => {
    const deadline = Date.now() + 10_000;
    while (!fs.existsSync(qmpSocket)) {
      if (exitInfo || Date.now() > deadline) throw new Error(`QMP socket ${qmpSocket} did not appear`);
      await sleep(50);
    }
    return new Promise((resolve, reject) => {
      const s = net.connect(qmpSocket);
      let buf = '';
      let stage = 0;
      const timer = setTimeout(() => { s.destroy(); reject(new Error(`QMP ${command}: no answer within 10 s`)); }, 10_000);
      s.on('error', (err) => { clearTimeout(timer); reject(err); });
      s.on('data', (d: Buffer) => {
        buf += d.toString('utf8');
        const lines = buf.split('\n');
        buf = lines.pop() ?? '';
        for (const line of lines) {
          if (!line.trim()) continue;
          const j = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc?: string }; event?: string };
          if (j.event) continue;
          if (stage === 0 && j.QMP) {
            stage = 1;
            s.write(`${JSON.stringify({ execute: 'qmp_capabilities' })}\n`);
          } else if (stage === 1) {
            stage = 2;
            s.write(`${JSON.stringify({ execute: command, ...(cmdArgs ? { arguments: cmdArgs } : {}) })}\n`);
          } else if (stage === 2) {
            clearTimeout(timer);
            s.end();
            if (j.error) reject(new Error(`QMP ${command}: ${j.error.desc ?? JSON.stringify(j.error)}`));
            else resolve(j.return);
          }
        }
      });
    });
  };

  const powerdown = async (timeoutMs = 60_000): Promise<boolean> => {
    if (exitInfo) return true;
    try {
      await qmp('system_powerdown');
    } catch { /* QEMU gone or stuck: SIGKILL below */ }
    const clean = await Promise.race([exited.then(() => true), sleep(timeoutMs).then(() => false)]);
    if (!clean) await kill();
    return clean;
  };

  // fail fast on a bad command line (QEMU exits at once)
  await Promise.race([exited, sleep(300)]);
  if (exitInfo) throw new Error(`qemu-system-x86_64 exited at start (${exitInfo.code ?? exitInfo.signal}): ${stderr.trim()}`);
  return { pid, name, serialLog: o.serialLog, qmpSocket, nvram, kvm, exited, waitSerial, serialText, lastSerialLines, qmp, powerdown, kill };
}
