import { execFile } from 'node:child_process';
import os from 'node:os';
import tls from 'node:tls';

import { APPLIANCE_UNITS, currentRelease, loadIdentity } from '../agent/index.ts';

/**
 * What the box's own screen shows once its services are up (holdfast-banner
 * at boot; `holdfast box-banner`): where to point a browser, the fingerprint
 * of the certificate the console really serves (read over TLS from the
 * console itself, so that it cannot disagree with what the browser is shown),
 * the release, and whether the box is enrolled with the fleet.
 */
export async function boxBanner(o: { console: string; agentDataDir: string; installRoot: string; waitMs?: number }): Promise<string> {
  const m = /^(.*):(\d+)$/.exec(o.console);
  const host = m?.[1] ?? '127.0.0.1';
  const port = Number(m?.[2] ?? 8443);
  const [fingerprint, release, identity, services] = await Promise.all([
    retry(() => consoleFingerprint(host, port), o.waitMs ?? 60_000).catch((err: Error) => `unavailable (${err.message}; see: journalctl -u holdfast-console)`),
    currentRelease(o.installRoot).catch(() => null),
    loadIdentity(o.agentDataDir).catch(() => null),
    unitStates(SERVICE_UNITS),
  ]);
  const addresses = Object.values(os.networkInterfaces()).flat()
    .filter((a): a is os.NetworkInterfaceInfo => !!a && !a.internal && a.family === 'IPv4')
    .map((a) => a.address);
  const lines = [
    `Holdfast ${release?.version ?? '(no release installed)'} on ${os.hostname()}`,
    ...(addresses.length
      ? addresses.map((a) => `Console: https://${a}:${port}/`)
      : ['Console: no network address yet (is the cable in, and does the network hand out addresses by DHCP?)']),
    `Console certificate: ${fingerprint}`,
    `Services: ${services}`,
    identity
      ? `Fleet: enrolled as ${identity.name} with ${identity.fleet} (${identity.enrolled})`
      : 'Fleet: not enrolled yet (see: journalctl -u holdfast-agent)',
  ];
  return lines.join('\n');
}

function consoleFingerprint(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host, port, rejectUnauthorized: false, servername: 'holdfast' }, () => {
      const cert = s.getPeerCertificate();
      s.destroy();
      if (!cert?.fingerprint256) reject(new Error('the console sent no certificate'));
      else resolve(`SHA256:${cert.fingerprint256}`);
    });
    s.setTimeout(10_000, () => s.destroy(new Error('no answer within 10 s')));
    s.on('error', reject);
  });
}

const SERVICE_UNITS = [...APPLIANCE_UNITS, 'holdfast-agent.service'];

/** "UNIT STATE, …" as systemd has them (active for a Type=notify unit means it sent READY=1); "unknown" off systemd. */
function unitStates(units: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile('systemctl', ['is-active', ...units], { timeout: 10_000, encoding: 'utf8' }, (_err, stdout) => {
      const states = (stdout ?? '').trim().split('\n');
      resolve(units.map((u, i) => `${u} ${states[i] || 'unknown'}`).join(', '));
    });
  });
}

/** The console may still be starting when the banner runs (a unit that failed is restarted): try for up to `ms`. */
async function retry<T>(f: () => Promise<T>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (Date.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}
