import { randomInt } from 'node:crypto';

import t from 'tap';

import { HoldfastError } from '../appliance/errors/index.ts';
import {
  FLAG_END, Frame, FrameDecoder, FrameType, HEADER_SIZE, MAX_GET_WINDOW, MAX_HAVE, MAX_LIST, MAX_PAYLOAD, REPLICATED_TYPES,
  type Request, contentAddressed, encodeFrame, encodeJson, frameHeader, parseHello, parseRequest, parseWireError,
} from '../appliance/protocol/index.ts';
import { validName } from '../appliance/storage/index.ts';

/** A small seeded PRNG (mulberry32), so a failing fuzz run can be repeated with HOLDFAST_FUZZ_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const SEED = Number(process.env.HOLDFAST_FUZZ_SEED ?? randomInt(2 ** 31));
const rnd = prng(SEED);
const int = (n: number) => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
const hex = (bytes: number) => {
  let s = '';
  for (let i = 0; i < bytes; i++) s += int(256).toString(16).padStart(2, '0');
  return s;
};
const buf = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));

/** Every kind of request a client may send, valid, with fresh random names. */
function validRequests(): Record<string, unknown>[] {
  const h = hex(32);
  const d = hex(32);
  return [
    { op: 'HAVE', files: [{ type: 'pack', name: h }] },
    { op: 'HAVE', files: [{ type: 'pack', name: h, digest: h }, { type: 'config', name: 'config', digest: d }, { type: 'key', name: 'passphrase-1' }] },
    { op: 'PUT', type: 'pack', name: h, size: 1234, digest: h, offset: 0 },
    { op: 'PUT', type: 'index', name: h, size: 0, digest: h, offset: 0 },
    { op: 'PUT', type: 'snapshot', name: h, size: 99, digest: h, offset: 50 },
    { op: 'PUT', type: 'config', name: 'config', size: 300, digest: d, offset: 0 },
    { op: 'PUT', type: 'key', name: 'recovery-2', size: 300, digest: d, offset: 301 },
    { op: 'GET', type: 'pack', name: h },
    { op: 'GET', type: 'index', name: h, offset: 10, length: 20, window: MAX_GET_WINDOW },
    { op: 'GET', type: 'config', name: 'config', window: 1 },
    { op: 'LIST', type: 'pack' },
    { op: 'LIST', type: 'snapshot', after: h, limit: MAX_LIST },
    { op: 'LIST', type: 'key', limit: 1 },
    { op: 'DELETE', type: 'snapshot', name: h },
    { op: 'DELETE', type: 'key', name: 'passphrase-x' },
    { op: 'STAT' },
    { op: 'STAT', type: 'pack', name: h },
  ];
}

const ALLOWED_REQUEST = new Set(['HF_PROTO_MALFORMED', 'HF_PROTO_UNSUPPORTED']);

/** The code parseRequest throws, or null when it accepts; any other exception type is rethrown. */
function requestOutcome(payload: Buffer): { code: string | null; request?: Request } {
  try {
    return { code: null, request: parseRequest(payload) };
  } catch (err) {
    if (!(err instanceof HoldfastError)) throw err;
    return { code: err.code };
  }
}

/** What an accepted request must satisfy, whatever the bytes were; the first violated rule, or null. */
function requestInvariant(r: Request): string | null {
  const safe = (v: unknown, optional = false) => (optional && v === undefined) || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0);
  const file = (type: unknown, name: unknown) => typeof type === 'string' && (REPLICATED_TYPES as readonly string[]).includes(type)
    && typeof name === 'string' && validName(type as 'pack', name);
  switch (r.op) {
    case 'HAVE':
      if (r.files.length < 1 || r.files.length > MAX_HAVE) return 'HAVE count';
      for (const f of r.files) {
        if (!file(f.type, f.name)) return 'HAVE name';
        if (f.digest !== undefined && !/^[0-9a-f]{64}$/.test(f.digest)) return 'HAVE digest';
        if (f.digest !== undefined && contentAddressed(f.type) && f.digest !== f.name) return 'HAVE digest≠name';
      }
      return null;
    case 'PUT':
      if (!file(r.type, r.name)) return 'PUT name';
      if (!/^[0-9a-f]{64}$/.test(r.digest)) return 'PUT digest';
      if (contentAddressed(r.type) && r.digest !== r.name) return 'PUT digest≠name';
      return safe(r.size) && safe(r.offset) ? null : 'PUT size/offset';
    case 'GET':
      if (!file(r.type, r.name)) return 'GET name';
      if (!safe(r.offset, true) || !safe(r.length, true)) return 'GET range';
      return r.window === undefined || (safe(r.window) && r.window >= 1 && r.window <= MAX_GET_WINDOW) ? null : 'GET window';
    case 'LIST':
      if (!(REPLICATED_TYPES as readonly string[]).includes(r.type)) return 'LIST type';
      if (r.after !== undefined && (typeof r.after !== 'string' || r.after.length > 256)) return 'LIST after';
      return r.limit === undefined || (safe(r.limit) && r.limit >= 1 && r.limit <= MAX_LIST) ? null : 'LIST limit';
    case 'DELETE':
      return file(r.type, r.name) ? null : 'DELETE name';
    case 'STAT':
      if (r.type === undefined && r.name === undefined) return null;
      return file(r.type, r.name) ? null : 'STAT name';
    default:
      return `unknown op ${String((r as { op: unknown }).op)}`;
  }
}

// ---------------------------------------------------------------- mutation

const WEIRD: readonly unknown[] = [
  -1, -0.5, 0.5, 1.5, -(2 ** 53), 2 ** 53, 2 ** 64, 1e300, -1e300, Number.MAX_SAFE_INTEGER, 0, 1, '0', '1', '', ' ', true, false, null,
  [], [1], {}, { toString: 1 }, { valueOf: 1, toString: 1 }, { __proto__: 1 }, 'x'.repeat(257), 'a'.repeat(300), '../x', '..', '.', 'a/b',
  '/etc/passwd', 'A'.repeat(64), 'g'.repeat(64), '0'.repeat(63), '0'.repeat(65), 'config/', 'CONFIG', 'Config', '\u0000', 'pack\n',
  'é'.repeat(64), 'passphrase-', '-x', 'k'.repeat(129), 'PUT', 'put', 'HAVE ', 'constructor', '__proto__', 'toString', 'hasOwnProperty',
];

function randomJson(depth = 0): unknown {
  switch (int(depth > 3 ? 4 : 7)) {
    case 0: return pick(WEIRD);
    case 1: return (rnd() - 0.5) * 10 ** int(20);
    case 2: return hex(int(40));
    case 3: return int(3) === 0 ? null : rnd() < 0.5;
    case 4: return Array.from({ length: int(5) }, () => randomJson(depth + 1));
    case 5: {
      const o: Record<string, unknown> = {};
      for (let i = int(5); i > 0; i--) o[pick(['op', 'type', 'name', 'files', 'size', 'digest', 'offset', 'versions', hex(2)])] = randomJson(depth + 1);
      return o;
    }
    default: return pick(validRequests());
  }
}

/** A structural change to a valid request: a field with a wrong value, missing, or an extra one. */
function mutateObject(o: Record<string, unknown>): unknown {
  const c = structuredClone(o);
  const keys = Object.keys(c);
  switch (int(12)) {
    case 0: c[pick(keys)] = pick(WEIRD); return c;
    case 1: delete c[pick(keys)]; return c;
    case 2: c[pick(['extra', 'tenant', '__proto__', 'constructor', hex(3)])] = randomJson(); return c; // extra fields are ignored
    case 3: c.op = pick([...WEIRD, 'have', 'Put', 'PUT\u0000', 'GETX', 'PURGE', 'UNDELETE', 'HELLO', hex(4)]); return c;
    case 4: return [c];
    case 5: return pick([1, 'PUT', null, true, [], '{}']);
    case 6: { // HAVE with a count at or past the limit, or with odd entries
      const h = hex(32);
      const n = rnd() < 0.8 ? int(3) : pick([MAX_HAVE, MAX_HAVE + 1, MAX_HAVE + int(50)]);
      return { op: 'HAVE', files: Array.from({ length: n }, (_, i) => (i === n - 1 && rnd() < 0.5 ? randomJson() : { type: 'pack', name: h })) };
    }
    case 7: { // digest ≠ name for a content-addressed type
      const type = pick(['pack', 'index', 'snapshot']);
      return rnd() < 0.5
        ? { op: 'PUT', type, name: hex(32), digest: hex(32), size: 1, offset: 0 }
        : { op: 'HAVE', files: [{ type, name: hex(32), digest: hex(32) }] };
    }
    case 8: { // a size, offset, length, window or limit that is not a whole number in range
      const field = pick(['size', 'offset', 'length', 'window', 'limit']);
      c[field] = pick([-1, 0.5, 2 ** 53, 1e300, '5', null, MAX_GET_WINDOW + 1, MAX_LIST + 1, 0]);
      return c;
    }
    case 9: { // names: a slash, dot-dot, uppercase, wrong length
      const n = typeof c.name === 'string' ? c.name : hex(32);
      c.name = pick([`${n.slice(0, 31)}/${n.slice(32)}`, `../${n.slice(3)}`, n.toUpperCase(), n.slice(1), `${n}0`, '..', 'a/b', `${n.slice(0, 62)}..`]);
      return c;
    }
    case 10: c.type = pick(['lock', 'locks', 'PACK', 'data', 'tmp', 'trash', 'partial', ...WEIRD]); return c;
    default: { // several at once
      let v: unknown = c;
      for (let i = 0; i < 3 && typeof v === 'object' && v !== null && !Array.isArray(v); i++) v = mutateObject(v as Record<string, unknown>);
      return v;
    }
  }
}

/** Byte-level damage: flips, inserts, deletions, truncation, duplication. */
function mutateBytes(b: Buffer): Buffer {
  let out = Buffer.from(b);
  for (let n = 1 + int(4); n > 0; n--) {
    const at = out.length === 0 ? 0 : int(out.length);
    switch (int(6)) {
      case 0: if (out.length) out[at] = int(256); break;
      case 1: if (out.length) out[at] = out[at]! ^ (1 << int(8)); break;
      case 2: out = Buffer.concat([out.subarray(0, at), Buffer.from([pick([0x22, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x5c, 0x00, 0xff, 0xc3, 0x2d, 0x30])]), out.subarray(at)]); break;
      case 3: out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1 + int(8))]); break;
      case 4: out = out.subarray(0, at); break;
      default: out = Buffer.concat([out.subarray(0, at), out.subarray(int(out.length + 1)), out.subarray(at)]); break;
    }
  }
  return out;
}

function randomBytesBuf(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(256);
  return b;
}

/** One fuzz payload: random, byte-mutated or structurally mutated, mostly close to valid. */
function fuzzPayload(): Buffer {
  switch (int(8)) {
    case 0: return randomBytesBuf(int(80));
    case 1: return buf(randomJson());
    case 2: case 3: return mutateBytes(buf(pick(validRequests())));
    case 4: return mutateBytes(buf(pick([{ versions: [1], client: 'holdfast 0.1.0', capabilities: [], maxFrame: MAX_PAYLOAD }, { versions: [1] }])));
    case 5: return buf(mutateObject(pick([{ versions: [1], client: 'x', capabilities: ['a'], maxFrame: 4096 } as Record<string, unknown>, { versions: pick([[], [1, 2], Array(17).fill(1), ['1'], [1.5]]) }])));
    default: return buf(mutateObject(pick(validRequests())));
  }
}

// ------------------------------------------------------------------- tests

function randomFrames(n: number, maxPayload: number): { frames: Frame[]; bytes: Buffer } {
  const frames: Frame[] = [];
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const len = rnd() < 0.1 ? 0 : rnd() < 0.05 ? int(maxPayload + 1) : int(300);
    const payload = randomBytesBuf(len);
    const f = new Frame(int(256), int(256), int(2 ** 32), [payload], len);
    frames.push(f);
    parts.push(frameHeader(f.type as FrameType, f.flags, f.stream, len), f.payload);
  }
  return { frames, bytes: Buffer.concat(parts) };
}

function decodeInPieces(bytes: Buffer, sizes: () => number, max = MAX_PAYLOAD): { frames: Frame[]; leftover: number } {
  const d = new FrameDecoder(max);
  const frames: Frame[] = [];
  for (let at = 0; at < bytes.length;) {
    const n = Math.min(bytes.length - at, Math.max(1, sizes()));
    // a copy, so no frame can alias the caller's buffer by accident
    for (const f of d.push(Buffer.from(bytes.subarray(at, at + n)))) frames.push(f);
    at += n;
  }
  return { frames, leftover: d.buffered };
}

const sameFrames = (a: Frame[], b: Frame[]) => a.length === b.length
  && a.every((f, i) => f.type === b[i]!.type && f.flags === b[i]!.flags && f.stream === b[i]!.stream && f.payload.equals(b[i]!.payload));

t.comment(`fuzz seed ${SEED} (HOLDFAST_FUZZ_SEED=${SEED} repeats this run)`);

t.test('FrameDecoder: whole, byte by byte and random splits give the same frames', async (t) => {
  for (let round = 0; round < 20; round++) {
    const { frames, bytes } = randomFrames(round === 0 ? 3 : 40, 100_000);
    const whole = decodeInPieces(bytes, () => bytes.length);
    if (!sameFrames(whole.frames, frames) || whole.leftover !== 0) {
      t.fail(`round ${round}: fed whole, the frames differ`);
      return;
    }
    const small = round < 3;
    const pieces = decodeInPieces(bytes, small ? () => 1 : () => (rnd() < 0.5 ? 1 + int(12) : 1 + int(5000)));
    if (!sameFrames(pieces.frames, frames) || pieces.leftover !== 0) {
      t.fail(`round ${round}: fed ${small ? 'byte by byte' : 'in random pieces'}, the frames differ`);
      return;
    }
  }
  t.pass('20 rounds of random frames (3 of them fed byte by byte) decode identically');

  const { frames, bytes } = randomFrames(5, 500);
  const cut = bytes.length - 3;
  const partial = decodeInPieces(bytes.subarray(0, cut), () => 7);
  t.ok(sameFrames(partial.frames, frames.slice(0, 4)), 'a truncated stream yields the whole frames before the cut');
  t.equal(partial.leftover, cut - frames.slice(0, 4).reduce((s, f) => s + HEADER_SIZE + f.payload.length, 0), 'and buffers exactly the rest');

  const enc = Buffer.concat(encodeJson(FrameType.REQUEST, FLAG_END, 7, { op: 'STAT' }));
  t.same(enc.subarray(0, HEADER_SIZE), Buffer.from([0, 0, 0, 13, 3, 1, 0, 0, 0, 7]), 'the 10-byte header: length, type, flags, stream (big-endian)');
  const [f] = new FrameDecoder().push(enc);
  t.same({ type: f!.type, flags: f!.flags, stream: f!.stream, length: f!.length, payload: f!.payload.toString() }, { type: 3, flags: 1, stream: 7, length: 13, payload: '{"op":"STAT"}' }, 'encodeJson round-trips');
  const empty = new FrameDecoder().push(Buffer.concat(encodeFrame(FrameType.CANCEL, 0, 0xffffffff)));
  t.equal(empty.length, 1, 'an empty payload is a frame');
  t.equal(empty[0]!.stream, 0xffffffff, 'stream ids use all 32 bits');
});

t.test('FrameDecoder: a header announcing more than the maximum throws before buffering', async (t) => {
  for (const length of [MAX_PAYLOAD + 1, 2 ** 31, 0xffffffff]) {
    const d = new FrameDecoder();
    const head = frameHeader(FrameType.DATA, 0, 1, length);
    t.throws(() => d.push(head), { code: 'HF_PROTO_FRAME_TOO_LARGE' }, `${length}: the header alone is refused`);
  }
  const d = new FrameDecoder();
  t.same(d.push(frameHeader(FrameType.DATA, 0, 1, MAX_PAYLOAD + 1).subarray(0, 6)), [], 'half a header waits');
  t.throws(() => d.push(frameHeader(FrameType.DATA, 0, 1, MAX_PAYLOAD + 1).subarray(6)), { code: 'HF_PROTO_FRAME_TOO_LARGE' }, 'the rest of it throws');

  const ok = new FrameDecoder();
  t.same(ok.push(frameHeader(FrameType.DATA, 0, 1, MAX_PAYLOAD)), [], 'exactly the maximum is accepted');
  t.equal(ok.buffered, HEADER_SIZE);
  const frames = ok.push(Buffer.alloc(MAX_PAYLOAD));
  t.equal(frames.length, 1);
  t.equal(frames[0]!.payload.length, MAX_PAYLOAD, 'and decoded whole');

  const small = new FrameDecoder(100);
  t.equal(small.push(Buffer.concat(encodeFrame(FrameType.DATA, 0, 1, Buffer.alloc(100)))).length, 1, 'a lower maximum: 100 passes');
  t.throws(() => small.push(frameHeader(FrameType.DATA, 0, 1, 101)), { code: 'HF_PROTO_FRAME_TOO_LARGE' }, 'and 101 does not');

  // The push throws; what matters is that the announced payload is never awaited or held.
  const mixed = new FrameDecoder();
  t.throws(() => mixed.push(Buffer.concat([...encodeJson(FrameType.REQUEST, 0, 1, { op: 'STAT' }), frameHeader(FrameType.DATA, 0, 1, 0xffffffff), Buffer.alloc(64)])),
    { code: 'HF_PROTO_FRAME_TOO_LARGE' }, 'an oversized header after a valid frame in one chunk throws');
  t.ok(mixed.buffered < HEADER_SIZE + 64 + 100, `at most that chunk is held (${mixed.buffered} bytes), never the announced 4 GiB`);
});

t.test('parseRequest accepts every valid operation', async (t) => {
  const h = hex(32);
  const d = hex(32);
  t.same(parseRequest(buf({ op: 'HAVE', files: [{ type: 'pack', name: h }, { type: 'config', name: 'config', digest: d }] })),
    { op: 'HAVE', files: [{ type: 'pack', name: h }, { type: 'config', name: 'config', digest: d }] }, 'HAVE');
  t.equal((parseRequest(buf({ op: 'HAVE', files: Array.from({ length: MAX_HAVE }, () => ({ type: 'index', name: h })) })) as { files: unknown[] }).files.length,
    MAX_HAVE, `HAVE with ${MAX_HAVE} entries`);
  for (const type of ['pack', 'index', 'snapshot'] as const) {
    t.same(parseRequest(buf({ op: 'PUT', type, name: h, size: 10, digest: h, offset: 3 })), { op: 'PUT', type, name: h, digest: h, size: 10, offset: 3 }, `PUT ${type}`);
  }
  t.same(parseRequest(buf({ op: 'PUT', type: 'config', name: 'config', size: 0, digest: d, offset: 0 })),
    { op: 'PUT', type: 'config', name: 'config', digest: d, size: 0, offset: 0 }, 'PUT config (digest given by the client)');
  t.same(parseRequest(buf({ op: 'PUT', type: 'key', name: 'passphrase-3f', size: Number.MAX_SAFE_INTEGER, digest: d, offset: Number.MAX_SAFE_INTEGER })),
    { op: 'PUT', type: 'key', name: 'passphrase-3f', digest: d, size: Number.MAX_SAFE_INTEGER, offset: Number.MAX_SAFE_INTEGER }, 'PUT key with sizes of 2^53 − 1');
  t.same(parseRequest(buf({ op: 'GET', type: 'pack', name: h })), { op: 'GET', type: 'pack', name: h }, 'GET');
  t.same(parseRequest(buf({ op: 'GET', type: 'pack', name: h, offset: 5, length: 0, window: MAX_GET_WINDOW })),
    { op: 'GET', type: 'pack', name: h, offset: 5, length: 0, window: MAX_GET_WINDOW }, 'GET a range with a window');
  t.same(parseRequest(buf({ op: 'LIST', type: 'snapshot' })), { op: 'LIST', type: 'snapshot' }, 'LIST');
  t.same(parseRequest(buf({ op: 'LIST', type: 'pack', after: h, limit: MAX_LIST })), { op: 'LIST', type: 'pack', after: h, limit: MAX_LIST }, 'LIST a page');
  t.same(parseRequest(buf({ op: 'DELETE', type: 'key', name: 'recovery-1' })), { op: 'DELETE', type: 'key', name: 'recovery-1' }, 'DELETE');
  t.same(parseRequest(buf({ op: 'STAT' })), { op: 'STAT' }, 'STAT (usage)');
  t.same(parseRequest(buf({ op: 'STAT', type: 'index', name: h })), { op: 'STAT', type: 'index', name: h }, 'STAT one file');
  t.same(parseRequest(buf({ op: 'STAT', future: [1, 2], tenant: 'someone-else' })), { op: 'STAT' }, 'unknown fields are ignored (and tenant cannot be named)');
  t.same(parseRequest(buf(' {"op":"STAT"}\n')), { op: 'STAT' }, 'whitespace around the object');
  for (const r of validRequests()) t.equal(requestInvariant(parseRequest(buf(r))), null, `${r.op} sample satisfies the invariants`);

  t.same(parseHello(buf({ versions: [1], client: 'holdfast 0.1.0', capabilities: [], maxFrame: MAX_PAYLOAD })),
    { versions: [1], client: 'holdfast 0.1.0', capabilities: [], maxFrame: MAX_PAYLOAD }, 'HELLO');
  t.same(parseHello(buf({ versions: [2, 1] })), { versions: [2, 1], client: 'unknown', capabilities: [] }, 'a minimal HELLO');
});

t.test('parseRequest rejects malformed requests with HF_PROTO_MALFORMED or HF_PROTO_UNSUPPORTED only', async (t) => {
  const h = hex(32);
  const d = hex(32);
  const put = { op: 'PUT', type: 'pack', name: h, size: 10, digest: h, offset: 0 };
  const M = 'HF_PROTO_MALFORMED';
  const U = 'HF_PROTO_UNSUPPORTED';
  const cases: [string, string | Buffer | unknown, string][] = [
    ['empty payload', '', M],
    ['not JSON', 'hello', M],
    ['truncated JSON', '{"op":"STAT"', M],
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), M],
    ['an array', '[{"op":"STAT"}]', M],
    ['null', 'null', M],
    ['a string', '"STAT"', M],
    ['a number', '42', M],
    ['deep nesting', '['.repeat(50_000) + ']'.repeat(50_000), M],
    ['no op', {}, U],
    ['unknown op', { op: 'PURGE' }, U],
    ['lower-case op', { op: 'put' }, U],
    ['op with a NUL', { op: 'STAT\u0000' }, U],
    ['op as a number', { op: 3 }, U],
    ['op as an object with toString', { op: { toString: 1 } }, U],
    ['op as an object with valueOf and toString', { op: { valueOf: 1, toString: 1 } }, U],
    ['op as an array', { op: ['STAT'] }, U],
    ['HAVE without files', { op: 'HAVE' }, M],
    ['HAVE with 0 entries', { op: 'HAVE', files: [] }, M],
    [`HAVE with ${MAX_HAVE + 1} entries`, { op: 'HAVE', files: Array.from({ length: MAX_HAVE + 1 }, () => ({ type: 'pack', name: h })) }, M],
    ['HAVE files as an object', { op: 'HAVE', files: { 0: { type: 'pack', name: h } } }, M],
    ['HAVE entry not an object', { op: 'HAVE', files: [h] }, M],
    ['HAVE entry an array', { op: 'HAVE', files: [['pack', h]] }, M],
    ['HAVE entry with digest ≠ name', { op: 'HAVE', files: [{ type: 'pack', name: h, digest: d }] }, M],
    ['HAVE entry of type lock', { op: 'HAVE', files: [{ type: 'lock', name: 'x' }] }, M],
    ['PUT of a lock', { ...put, type: 'lock', name: 'l1' }, M],
    ['PUT type missing', { ...put, type: undefined }, M],
    ['PUT type as a number', { ...put, type: 1 }, M],
    ['PUT size missing', { ...put, size: undefined }, M],
    ['PUT size negative', { ...put, size: -1 }, M],
    ['PUT size not whole', { ...put, size: 1.5 }, M],
    ['PUT size 2^53', { ...put, size: 2 ** 53 }, M],
    ['PUT size 1e300', { ...put, size: 1e300 }, M],
    ['PUT size as a string', { ...put, size: '10' }, M],
    ['PUT size null', { ...put, size: null }, M],
    ['PUT offset negative', { ...put, offset: -5 }, M],
    ['PUT offset missing', { ...put, offset: undefined }, M],
    ['PUT digest ≠ name', { ...put, digest: d }, M],
    ['PUT digest missing', { ...put, digest: undefined }, M],
    ['PUT digest upper-case', { ...put, name: h.toUpperCase(), digest: h.toUpperCase() }, M],
    ['PUT name with a slash', { ...put, name: `${h.slice(0, 30)}/${h.slice(31)}` }, M],
    ['PUT name ..', { ...put, name: '..' }, M],
    ['PUT name ../ + 61 hex', { ...put, name: `../${h.slice(3)}`, digest: `../${h.slice(3)}` }, M],
    ['PUT name 63 hex', { ...put, name: h.slice(1), digest: h.slice(1) }, M],
    ['PUT name 65 hex', { ...put, name: `${h}0`, digest: `${h}0` }, M],
    ['PUT name not hex', { ...put, name: 'g'.repeat(64), digest: 'g'.repeat(64) }, M],
    ['PUT name as a number', { ...put, name: 5 }, M],
    ['PUT name of 300 characters', { ...put, type: 'key', name: 'k'.repeat(300), digest: d }, M],
    ['PUT config named otherwise', { ...put, type: 'config', name: 'config2', digest: d }, M],
    ['PUT key with a slash', { ...put, type: 'key', name: 'a/b', digest: d }, M],
    ['PUT key upper-case', { ...put, type: 'key', name: 'Passphrase-1', digest: d }, M],
    ['PUT key starting with -', { ...put, type: 'key', name: '-x', digest: d }, M],
    ['PUT key ..', { ...put, type: 'key', name: '..', digest: d }, M],
    ['PUT key of 129 characters', { ...put, type: 'key', name: 'k'.repeat(129), digest: d }, M],
    ['GET offset negative', { op: 'GET', type: 'pack', name: h, offset: -1 }, M],
    ['GET length not whole', { op: 'GET', type: 'pack', name: h, length: 0.1 }, M],
    ['GET window 0', { op: 'GET', type: 'pack', name: h, window: 0 }, M],
    ['GET window over 16 MiB', { op: 'GET', type: 'pack', name: h, window: MAX_GET_WINDOW + 1 }, M],
    ['GET name uppercase', { op: 'GET', type: 'pack', name: h.toUpperCase() }, M],
    ['GET of a lock', { op: 'GET', type: 'lock', name: 'x' }, M],
    ['LIST without type', { op: 'LIST' }, M],
    ['LIST limit 0', { op: 'LIST', type: 'pack', limit: 0 }, M],
    ['LIST limit over the maximum', { op: 'LIST', type: 'pack', limit: MAX_LIST + 1 }, M],
    ['LIST after as a number', { op: 'LIST', type: 'pack', after: 5 }, M],
    ['LIST after of 257 characters', { op: 'LIST', type: 'pack', after: 'a'.repeat(257) }, M],
    ['DELETE name with a slash', { op: 'DELETE', type: 'index', name: 'a/b' }, M],
    ['DELETE without a name', { op: 'DELETE', type: 'index' }, M],
    ['STAT with a name but no type', { op: 'STAT', name: h }, M],
    ['STAT with a type but no name', { op: 'STAT', type: 'pack' }, M],
    ['STAT type null', { op: 'STAT', type: null }, M],
  ];
  for (const [what, v, code] of cases) {
    const payload = Buffer.isBuffer(v) ? v : typeof v === 'string' ? Buffer.from(v) : buf(v);
    let got: unknown;
    try {
      parseRequest(payload);
      got = 'accepted';
    } catch (err) {
      got = err;
    }
    t.ok(got instanceof HoldfastError && got.code === code, `${what}: ${code}`, { got: got instanceof HoldfastError ? got.code : String(got) });
  }
  for (const [what, v] of [['versions missing', {}], ['versions empty', { versions: [] }], ['17 versions', { versions: Array(17).fill(1) }],
    ['version as a string', { versions: ['1'] }], ['version not whole', { versions: [1.5] }], ['capabilities not a list', { versions: [1], capabilities: 'x' }],
    ['a long capability', { versions: [1], capabilities: ['c'.repeat(65)] }], ['65 capabilities', { versions: [1], capabilities: Array(65).fill('c') }],
    ['client a number', { versions: [1], client: 1 }], ['maxFrame negative', { versions: [1], maxFrame: -1 }], ['an array', [{ versions: [1] }]],
    ['not JSON', '\u0001\u0002']] as [string, unknown][]) {
    t.throws(() => parseHello(typeof v === 'string' ? Buffer.from(v) : buf(v)), { code: 'HF_PROTO_MALFORMED' }, `HELLO ${what}: HF_PROTO_MALFORMED`);
  }
  t.same(parseWireError(Buffer.from('garbage')), { code: 'HF_PROTO_MALFORMED', message: 'the store sent an unreadable error', retryable: false },
    'an unreadable ERROR payload becomes HF_PROTO_MALFORMED');
  t.equal(parseWireError(buf({ code: 'not a code', message: 'x' })).code, 'HF_PROTO_MALFORMED', 'an ERROR code that is not HF_… is not passed on');
});

t.test('fuzz: 200,000+ random and mutated payloads through FrameDecoder, parseRequest and parseHello', async (t) => {
  const N = Number(process.env.HOLDFAST_FUZZ_COUNT ?? 200_000);
  const started = performance.now();
  const codes = new Map<string, number>();
  const bad: string[] = [];
  let accepted = 0;
  let helloAccepted = 0;
  let tooLarge = 0;
  let frames = 0;
  let batches = 0;
  const note = (what: string) => { if (bad.length < 10) bad.push(what); };
  const count = (k: string) => codes.set(k, (codes.get(k) ?? 0) + 1);
  for (let done = 0; done < N;) {
    // a batch of frames, one of them now and then with an oversized header, fed in random pieces
    const batch: Buffer[] = [];
    const parts: Buffer[] = [];
    const n = 1 + int(64);
    const oversizedAt = rnd() < 0.05 ? int(n) : -1;
    for (let i = 0; i < n; i++) {
      if (i === oversizedAt) {
        parts.push(frameHeader(FrameType.REQUEST, 0, 1, MAX_PAYLOAD + 1 + int(2 ** 31)), randomBytesBuf(int(20)));
        break;
      }
      const p = fuzzPayload();
      batch.push(p);
      parts.push(frameHeader(pick([FrameType.REQUEST, FrameType.HELLO, int(256) as FrameType]), int(2), int(2 ** 32), p.length), p);
    }
    batches++;
    const bytes = Buffer.concat(parts);
    const decoder = new FrameDecoder();
    const got: Frame[] = [];
    try {
      for (let at = 0; at < bytes.length;) {
        const k = Math.max(1, rnd() < 0.3 ? int(11) : int(bytes.length));
        got.push(...decoder.push(bytes.subarray(at, at + k)));
        at += k;
      }
      if (oversizedAt >= 0) note('an oversized header did not throw');
    } catch (err) {
      if (!(err instanceof HoldfastError) || err.code !== 'HF_PROTO_FRAME_TOO_LARGE' || oversizedAt < 0) note(`FrameDecoder threw ${String(err)}`);
      else tooLarge++;
    }
    frames += got.length;
    // Frames decoded by the push that met an oversized header are dropped with it (a connection error ends everything).
    if ((oversizedAt < 0 ? got.length !== batch.length : got.length > batch.length) || !got.every((f, i) => f.payload.equals(batch[i]!))) {
      note(`FrameDecoder returned ${got.length} frames for ${batch.length}, or changed a payload`);
    }
    for (const f of got) {
      done++;
      try {
        const r = requestOutcome(f.payload);
        if (r.code === null) {
          accepted++;
          const broken = requestInvariant(r.request!);
          if (broken) note(`accepted but invalid (${broken}): ${f.payload.toString('utf8').slice(0, 200)}`);
        } else {
          count(`REQUEST ${r.code}`);
          if (!ALLOWED_REQUEST.has(r.code)) note(`parseRequest threw ${r.code}`);
        }
      } catch (err) {
        note(`parseRequest threw ${String(err)} for ${JSON.stringify(f.payload.toString('latin1').slice(0, 200))}`);
      }
      try {
        const h = parseHello(f.payload);
        helloAccepted++;
        if (!Array.isArray(h.versions) || !h.versions.every((v) => Number.isSafeInteger(v))) note('a HELLO accepted with odd versions');
      } catch (err) {
        if (!(err instanceof HoldfastError) || err.code !== 'HF_PROTO_MALFORMED') note(`parseHello threw ${String(err)}`);
        else count('HELLO HF_PROTO_MALFORMED');
      }
      try {
        const w = parseWireError(f.payload);
        if (!/^HF_[A-Z0-9_]+$/.test(w.code) || typeof w.message !== 'string') note('parseWireError gave an odd result');
      } catch (err) {
        note(`parseWireError threw ${String(err)}`);
      }
    }
  }
  const ms = performance.now() - started;
  t.comment(`${N} payloads in ${frames} frames (${tooLarge} batches ended by an oversized header) in ${(ms / 1000).toFixed(1)} s: `
    + `${accepted} requests and ${helloAccepted} HELLOs accepted (all satisfying the invariants); rejections: ${JSON.stringify(Object.fromEntries(codes))}`);
  t.same(bad, [], 'only HoldfastError with the allowed codes, and every accepted request is valid');
  t.ok(frames >= 200_000 || N < 200_000, `${frames} frames decoded and parsed`);
  t.ok(tooLarge > batches / 40, `${tooLarge} oversized headers refused (of ${batches} batches)`);
  t.ok((codes.get('REQUEST HF_PROTO_MALFORMED') ?? 0) > N / 4 && (codes.get('REQUEST HF_PROTO_UNSUPPORTED') ?? 0) > 1000, 'both rejection codes are exercised');
  t.ok(accepted > 1000, 'and the mutations stay close enough to valid that some are accepted');
});

