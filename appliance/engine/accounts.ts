import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';

import { HoldfastError } from '../errors/index.ts';
import type { Clock } from './clock.ts';
import { ROLES, type Role, type StateStore } from './state-store.ts';

/**
 * What each role may do; every API route names the permission it needs.
 * 'local' is granted to no role: only the box itself (the CLI or the agent,
 * `Authorization: Local`) has it, never a console session.
 */
export type Permission = 'read' | 'run' | 'restore' | 'configure' | 'local';
const GRANTS: Record<Role, readonly Permission[]> = {
  viewer: ['read'],
  operator: ['read', 'run', 'restore'],
  admin: ['read', 'run', 'restore', 'configure'],
};

export function allows(role: Role, p: Permission): boolean {
  return GRANTS[role].includes(p);
}

/** The one acting: a console user with a session, or the local CLI (the socket's permissions are its login). */
export interface Actor {
  user: string;
  role: Role;
  /** The session's CSRF token (console users only). */
  csrf?: string;
}

export const LOCAL_ACTOR: Actor = { user: 'local', role: 'admin' };

const SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const;
const HASH_LEN = 32;
/** Wrong passwords within a minute that lock the account, and for how long. */
export const LOCKOUT_FAILURES = 6;
export const LOCKOUT_MS = 5 * 60_000;
/** Sessions end 12 h after login, or after 1 h without a request. */
export const SESSION_LIFETIME_MS = 12 * 3_600_000;
export const SESSION_IDLE_MS = 3_600_000;
const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MIN_PASSWORD = 10;

function scrypt(password: string, salt: Buffer, p: { N: number; r: number; p: number }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCb(password.normalize('NFC'), salt, HASH_LEN, { ...p, maxmem: 256 * p.N * p.r + (16 << 20) },
      (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const h = await scrypt(password, salt, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${h.toString('base64')}`;
}

export async function verifyPassword(password: string, record: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = record.split('$');
  if (kind !== 'scrypt' || !salt || !hash) return false;
  const want = Buffer.from(hash, 'base64');
  const got = await scrypt(password, Buffer.from(salt, 'base64'), { N: Number(n), r: Number(r), p: Number(p) });
  return got.length === want.length && timingSafeEqual(got, want);
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** A stand-in record, so that an unknown user name costs the same scrypt as a known one. */
let dummyRecord: Promise<string> | null = null;

/**
 * Users, logins and sessions. Passwords are scrypt hashes; a session is a
 * random token the console keeps in a cookie, stored here only as its
 * SHA-256, with a CSRF token the console checks on every change. The 6th
 * wrong password for a user within a minute locks that user for 5 minutes
 * (the right password too, meanwhile). Every login, failure, lock and user
 * change is in the audit log.
 */
export class Accounts {
  readonly #state: StateStore;
  readonly #clock: Clock;

  constructor(state: StateStore, clock: Clock) {
    this.#state = state;
    this.#clock = clock;
  }

  async needsSetup(): Promise<boolean> {
    return (await this.#state.users()).length === 0;
  }

  static validateUser(name: unknown, password: unknown, role: unknown = 'admin'): { name: string; password: string; role: Role } {
    if (typeof name !== 'string' || !NAME.test(name)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', 'a user name is 1-64 characters: lower-case letters, digits, ".", "_", "-", starting with a letter or digit');
    }
    if (typeof password !== 'string' || [...password].length < MIN_PASSWORD) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `a password has at least ${MIN_PASSWORD} characters`);
    }
    if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role)) {
      throw new HoldfastError('HF_INVALID_ARGUMENT', `a role is one of ${ROLES.join(', ')}`);
    }
    return { name, password, role: role as Role };
  }

  async addUser(name: unknown, password: unknown, role: unknown, by: Actor): Promise<void> {
    const u = Accounts.validateUser(name, password, role);
    await this.#state.addUser({ name: u.name, role: u.role, password: await hashPassword(u.password), created: new Date(this.#clock.now()).toISOString() });
    await this.#state.audit(by.user, 'user.add', { name: u.name, role: u.role }, this.#clock.now());
  }

  /** The first admin, once: HF_SETUP_DONE when any user exists. */
  async setup(name: unknown, password: unknown): Promise<void> {
    if (!(await this.needsSetup())) throw new HoldfastError('HF_SETUP_DONE', 'the appliance is set up already; log in');
    await this.addUser(name, password, 'admin', { user: typeof name === 'string' ? name : '?', role: 'admin' });
  }

  async login(name: unknown, password: unknown, from: string): Promise<{ token: string; actor: Actor }> {
    const now = this.#clock.now();
    if (typeof name !== 'string' || typeof password !== 'string') throw new HoldfastError('HF_WRONG_CREDENTIALS', 'give a user name and a password');
    const u = await this.#state.user(name);
    if (!u) {
      dummyRecord ??= hashPassword(randomBytes(16).toString('hex'));
      await verifyPassword(password, await dummyRecord);
      await this.#state.audit(name, 'login.failed', { from, reason: 'unknown user' }, now);
      throw new HoldfastError('HF_WRONG_CREDENTIALS', 'wrong user name or password');
    }
    if (u.lockedUntil > now) {
      await this.#state.audit(name, 'login.refused', { from, reason: 'locked' }, now);
      throw locked(u.lockedUntil);
    }
    if (!(await verifyPassword(password, u.password))) {
      const failures = await this.#state.recordLoginFailure(name, now);
      if (failures >= LOCKOUT_FAILURES) {
        const until = now + LOCKOUT_MS;
        await this.#state.updateUser(name, { lockedUntil: until });
        await this.#state.audit(name, 'account.locked', { from, failures, until: new Date(until).toISOString() }, now);
        throw locked(until);
      }
      await this.#state.audit(name, 'login.failed', { from, failures }, now);
      throw new HoldfastError('HF_WRONG_CREDENTIALS', 'wrong user name or password');
    }
    await this.#state.clearLoginFailures(name);
    const token = randomBytes(32).toString('base64url');
    const csrf = randomBytes(24).toString('base64url');
    await this.#state.addSession(sha256(token), name, csrf, now);
    await this.#state.audit(name, 'login', { from }, now);
    return { token, actor: { user: name, role: u.role, csrf } };
  }

  /** The session's actor, or null when the token is unknown or the session expired. */
  async session(token: string): Promise<Actor | null> {
    const now = this.#clock.now();
    const h = sha256(token);
    const s = await this.#state.session(h);
    if (!s) return null;
    if (s.created < now - SESSION_LIFETIME_MS || s.seen < now - SESSION_IDLE_MS) {
      await this.#state.removeSession(h);
      return null;
    }
    const u = await this.#state.user(s.user);
    if (!u || u.lockedUntil > now) return null;
    if (now - s.seen > 60_000) await this.#state.touchSession(h, now);
    return { user: u.name, role: u.role, csrf: s.csrf };
  }

  async logout(token: string, actor: Actor): Promise<void> {
    await this.#state.removeSession(sha256(token));
    await this.#state.audit(actor.user, 'logout', {}, this.#clock.now());
  }

  async setPassword(name: string, password: unknown, by: Actor): Promise<void> {
    const u = await this.#state.user(name);
    if (!u) throw new HoldfastError('HF_NOT_FOUND', `no user named ${name}`);
    const { password: p } = Accounts.validateUser(name, password, u.role);
    await this.#state.updateUser(name, { password: await hashPassword(p), lockedUntil: 0 });
    await this.#state.removeSessionsOf(name);
    await this.#state.audit(by.user, 'user.password', { name }, this.#clock.now());
  }

  async setRole(name: string, role: unknown, by: Actor): Promise<void> {
    const { role: r } = Accounts.validateUser(name, 'x'.repeat(MIN_PASSWORD), role);
    await this.#lastAdminGuard(name, r);
    await this.#state.updateUser(name, { role: r });
    await this.#state.audit(by.user, 'user.role', { name, role: r }, this.#clock.now());
  }

  async removeUser(name: string, by: Actor): Promise<void> {
    await this.#lastAdminGuard(name, null);
    await this.#state.removeUser(name);
    await this.#state.audit(by.user, 'user.remove', { name }, this.#clock.now());
  }

  async #lastAdminGuard(name: string, newRole: Role | null): Promise<void> {
    const users = await this.#state.users();
    const admins = users.filter((u) => u.role === 'admin' && u.name !== name);
    const u = users.find((x) => x.name === name);
    if (!u) throw new HoldfastError('HF_NOT_FOUND', `no user named ${name}`);
    if (u.role === 'admin' && newRole !== 'admin' && admins.length === 0) {
      throw new HoldfastError('HF_CONFLICT', `${name} is the last admin: make another user admin first`);
    }
  }

  async expire(): Promise<void> {
    const now = this.#clock.now();
    await this.#state.expireSessions(now - SESSION_LIFETIME_MS, now - SESSION_IDLE_MS);
  }
}

function locked(until: number): HoldfastError {
  return new HoldfastError('HF_ACCOUNT_LOCKED',
    `too many wrong passwords: this account is locked until ${new Date(until).toISOString()}; try again then, or ask another admin to set a new password`,
    { details: { until: new Date(until).toISOString() } });
}
