/**
 * What the fleet service keeps: enrollment tokens, boxes and their
 * certificates, the last heartbeat of each box, commands for boxes and their
 * results, configuration escrows, releases and their rollout, update reports.
 *
 * An interface so that a large fleet can move from the embedded SQLite store
 * (sqlite-fleet-store.ts, the default) to PostgreSQL: every method is one
 * short transaction, no method holds state between calls, and nothing but
 * the store touches the database.
 */

/** A box's name: its certificate's CN, and its tenant name at the offsite stores. */
export type BoxName = string;

export interface TokenRecord {
  /** SHA-256 (hex) of the token: the token itself is never stored. */
  hash: string;
  created: number;
  expires: number;
  /** When it was used, or null: a token enrolls one box, once. */
  used: number | null;
  usedBy: BoxName | null;
  /** Enroll as the replacement of this box (same name and tenant; its old certificate is revoked). */
  replaces: BoxName | null;
  note: string;
}

export type CertificateState = 'current' | 'pending' | 'revoked';

export interface CertificateRecord {
  serial: string;
  box: BoxName;
  issued: number;
  notAfter: number;
  state: CertificateState;
}

export interface BoxRecord {
  name: BoxName;
  enrolled: number;
  /** Enrolled again as a replacement (the latest time), or null. */
  replaced: number | null;
  revoked: number | null;
  hostname: string;
  channel: string;
  version: string | null;
  lastHeartbeat: number | null;
  /** The last heartbeat's report, as the box sent it (validated). */
  report: Record<string, unknown> | null;
}

export type CommandKind = 'run-job' | 'set' | 'upgrade' | 'rotate-key';
export type CommandState = 'pending' | 'sent' | 'done' | 'failed';

export interface CommandRecord {
  id: number;
  box: BoxName;
  kind: CommandKind;
  args: Record<string, unknown>;
  created: number;
  by: string;
  state: CommandState;
  /** Last time the command went out in a heartbeat answer. */
  sent: number | null;
  finished: number | null;
  result: Record<string, unknown> | null;
}

export interface EscrowRecord {
  box: BoxName;
  version: number;
  at: number;
  sha256: string;
  blob: Buffer;
}

export interface ReleaseRecord {
  channel: string;
  version: string;
  published: number;
  /** Boxes whose stable hash falls below this percentage are offered the release. */
  percent: number;
  halted: number | null;
  haltReason: string | null;
}

export type UpdateOutcome = 'installed' | 'failed';

export interface UpdateReport {
  box: BoxName;
  channel: string;
  version: string;
  outcome: UpdateOutcome;
  at: number;
  detail: string;
}

/** The contract every fleet store implementation passes (test/fleet-store.test.ts runs it). */
export interface FleetStore {
  /** MUST refuse a second token with the same hash (HF_CONFLICT). */
  addToken(t: TokenRecord): Promise<void>;
  /**
   * Marks a token used by `box` if it is unused and unexpired at `now`,
   * atomically: of two concurrent uses exactly one wins. Returns the token
   * as it was, or null when it is unknown, used or expired.
   */
  useToken(hash: string, box: BoxName, now: number): Promise<TokenRecord | null>;
  token(hash: string): Promise<TokenRecord | null>;
  tokens(): Promise<TokenRecord[]>;

  /** Creates the box, or (a replacement) updates it: enrolled stays, replaced = now, revoked cleared. */
  putBox(b: { name: BoxName; hostname: string; channel: string; at: number; replacement: boolean }): Promise<void>;
  box(name: BoxName): Promise<BoxRecord | null>;
  boxes(): Promise<BoxRecord[]>;
  boxNames(): Promise<BoxName[]>;
  revokeBox(name: BoxName, at: number): Promise<string[]>;
  /** Records a heartbeat: version, channel and report of the box. */
  heartbeat(name: BoxName, at: number, version: string, channel: string, report: Record<string, unknown>): Promise<void>;

  addCertificate(c: CertificateRecord): Promise<void>;
  certificate(serial: string): Promise<CertificateRecord | null>;
  /** Makes `serial` the box's current certificate; every other one of the box is revoked. Returns the serials revoked. */
  promoteCertificate(box: BoxName, serial: string): Promise<string[]>;
  certificates(box: BoxName): Promise<CertificateRecord[]>;

  addCommand(c: Omit<CommandRecord, 'id' | 'state' | 'sent' | 'finished' | 'result'>): Promise<number>;
  /** Pending and sent (unacknowledged) commands of a box, oldest first; marks them sent at `now`. */
  takeCommands(box: BoxName, now: number): Promise<CommandRecord[]>;
  /** Records a command's result; MUST ignore a command of another box (returns false). */
  finishCommand(box: BoxName, id: number, ok: boolean, result: Record<string, unknown>, at: number): Promise<boolean>;
  commands(box: BoxName, limit: number): Promise<CommandRecord[]>;

  /** Adds an escrow version (the previous ones are kept: `keep` newest). */
  putEscrow(e: Omit<EscrowRecord, 'version'>, keep: number): Promise<number>;
  escrow(box: BoxName, version?: number): Promise<EscrowRecord | null>;
  /** The newest escrow's version and hash, without its bytes (every heartbeat answer names it). */
  escrowInfo(box: BoxName): Promise<{ version: number; sha256: string } | null>;

  putRelease(r: ReleaseRecord): Promise<void>;
  release(channel: string, version: string): Promise<ReleaseRecord | null>;
  releases(channel?: string): Promise<ReleaseRecord[]>;
  setRollout(channel: string, version: string, percent: number): Promise<void>;
  haltRelease(channel: string, version: string, at: number, reason: string): Promise<void>;
  resumeRelease(channel: string, version: string): Promise<void>;

  addUpdateReport(r: UpdateReport): Promise<void>;
  updateReports(channel: string, version: string): Promise<UpdateReport[]>;
  /** Boxes that were offered a release (the first heartbeat answer naming it). */
  recordOffer(box: BoxName, channel: string, version: string, at: number): Promise<void>;
  offers(channel: string, version: string): Promise<BoxName[]>;

  close(): Promise<void>;
}
