import type { Logger } from 'pino';

import { sdNotify } from '../../native/index.ts';
import type { JobRecord } from './state-store.ts';

const STATUS_MS = 1000;
const HEALTH_TIMEOUT_MS = 5000;

/** A job's progress in a few words, for STATUS= and logs. */
export function jobSummary(j: JobRecord): string {
  const p = (j.progress ?? {}) as { percent?: number | null; rate?: number; phase?: string };
  const parts = [`${j.kind}${j.subject ? ` ${j.subject}` : ''}`];
  if (p.phase) parts.push(p.phase);
  if (typeof p.percent === 'number') parts.push(`${p.percent}%`);
  if (typeof p.rate === 'number' && p.rate > 0) parts.push(`${(p.rate / 1e6).toFixed(1)} MB/s`);
  return parts.join(' ');
}

/**
 * Talks to systemd (sd_notify(3)) from the service's own process, through
 * the native addon (no short-lived `systemd-notify` child whose messages
 * systemd may not attribute to the service: see NotifyAccess): READY=1 once
 * the API serves, STATUS= with job progress, and WATCHDOG=1 every half
 * WATCHDOG_USEC only when the health check passes, so that a wedged engine
 * is restarted. Without NOTIFY_SOCKET (not started by systemd) it does nothing.
 */
export class Notifier {
  readonly #log: Logger;
  readonly #socket: string | undefined;
  #watchdog: NodeJS.Timeout | null = null;
  #lastStatus = 0;
  #pendingStatus: NodeJS.Timeout | null = null;

  constructor(log: Logger, env: NodeJS.ProcessEnv = process.env) {
    this.#log = log;
    this.#socket = env.NOTIFY_SOCKET;
    this.#watchdogUsec = Number(env.WATCHDOG_USEC ?? 0);
    const pid = env.WATCHDOG_PID ? Number(env.WATCHDOG_PID) : process.pid;
    if (pid !== process.pid) this.#watchdogUsec = 0; // meant for another process
  }

  readonly #watchdogUsec: number;

  #send(state: string): void {
    const r = sdNotify(state, this.#socket);
    if (typeof r === 'string') this.#log.warn({ errno: r, state: state.split('\n')[0] }, 'sd_notify failed');
  }

  ready(healthy: () => Promise<boolean>): void {
    if (!this.#socket) return;
    this.#send(`READY=1\nSTATUS=idle\nMAINPID=${process.pid}`);
    if (this.#watchdogUsec > 0) {
      const every = Math.max(500, Math.floor(this.#watchdogUsec / 2000));
      this.#watchdog = setInterval(() => {
        const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), HEALTH_TIMEOUT_MS).unref());
        void Promise.race([healthy(), timeout]).then((ok) => {
          if (ok) this.#send('WATCHDOG=1');
          else this.#log.error('health check failed: no watchdog ping (systemd restarts the engine if this goes on)');
        });
      }, every);
      this.#watchdog.unref();
    }
  }

  /** STATUS= with what runs, at most once a second (the last state is sent). */
  jobStatus(running: JobRecord[]): void {
    if (!this.#socket) return;
    const text = running.length === 0 ? 'idle' : running.map(jobSummary).join('; ');
    const send = () => {
      this.#pendingStatus = null;
      this.#lastStatus = Date.now();
      this.#send(`STATUS=${text.replace(/\n/g, ' ')}`);
    };
    if (this.#pendingStatus) clearTimeout(this.#pendingStatus);
    const wait = STATUS_MS - (Date.now() - this.#lastStatus);
    if (wait <= 0) send();
    else {
      this.#pendingStatus = setTimeout(send, wait);
      this.#pendingStatus.unref();
    }
  }

  stopping(): void {
    if (this.#watchdog) clearInterval(this.#watchdog);
    if (this.#pendingStatus) clearTimeout(this.#pendingStatus);
    this.#watchdog = null;
    if (this.#socket) this.#send('STOPPING=1');
  }
}
