import t, { type Test } from 'tap';

import { HoldfastError } from '../appliance/errors/index.ts';
import {
  type RateClock, RateLimiter, TokenBucket, parseRate, parseWindows, rateAt,
} from '../appliance/replication/rate-limit.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** A clock whose time only moves when run() jumps to the next pending sleep. */
class FakeClock implements RateClock {
  t: number;
  #seq = 0;
  #timers: { at: number; seq: number; fire: () => void }[] = [];

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const timer = { at: this.t + ms, seq: this.#seq++, fire: () => (signal?.removeEventListener('abort', onAbort), resolve()) };
      const onAbort = () => {
        this.#timers = this.#timers.filter((x) => x !== timer);
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#timers.push(timer);
    });
  }

  get pending(): number {
    return this.#timers.length;
  }

  /** Lets all promise chains settle, then jumps to the next timer, until p settles. */
  async run<T>(p: Promise<T>): Promise<T> {
    let settled = false;
    p.then(() => (settled = true), () => (settled = true));
    for (;;) {
      await new Promise((r) => setImmediate(r));
      if (settled) return p;
      this.#timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.#timers.shift();
      if (!next) throw new Error('deadlock: a promise waits but no timer is pending');
      this.t = next.at;
      next.fire();
    }
  }
}

/** A continuous sender: takes `size` from the limiter and "sends" it, until `forMs` have passed. */
async function sender(limiter: { take(n: number): Promise<void> }, clock: RateClock, size: number, forMs: number) {
  const start = clock.now();
  const log: { at: number; n: number }[] = [];
  while (clock.now() - start < forMs) {
    await limiter.take(size);
    log.push({ at: clock.now() - start, n: size });
  }
  return log;
}

type Log = { at: number; n: number }[];
const bytesIn = (log: Log, from: number, to: number) => log.filter((e) => e.at >= from && e.at < to).reduce((s, e) => s + e.n, 0);
/** Most bytes sent in any half-open interval of 1 s (the worst interval starts at a send). */
const maxPerSecond = (log: Log) => Math.max(...log.map((e) => bytesIn(log, e.at, e.at + 1000)));
const averagesOver10s = (log: Log, seconds: number) =>
  Array.from({ length: seconds - 9 }, (_, k) => bytesIn(log, k * 1000, (k + 10) * 1000) / 10);

function assertPaced(t: Test, log: Log, rate: number, seconds: number) {
  for (const avg of averagesOver10s(log, seconds)) t.ok(Math.abs(avg / rate - 1) <= 0.02, `10 s average ${(avg / MiB).toFixed(3)} MiB/s is within 2%`);
  const max = maxPerSecond(log);
  t.ok(max <= 1.5 * rate, `busiest second ${(max / MiB).toFixed(3)} MiB ≤ 1.5 × ${(rate / MiB).toFixed(3)} MiB/s`);
}

const usage = (fn: () => unknown, text: string) => {
  try {
    fn();
  } catch (err) {
    return err instanceof HoldfastError && err.code === 'HF_USAGE' && err.message.includes(text) && err.message.includes('e.g.');
  }
  return false;
};

t.test('parseRate gives exact bytes per second and rejects anything else with HF_USAGE', async (t) => {
  const good: [string, number][] = [
    ['20MiB/s', 20 * MiB], ['2MiB/s', 2 * MiB], ['500KiB/s', 512_000], ['1.5GiB/s', 1_610_612_736],
    ['10MB/s', 10_000_000], ['800kB/s', 800_000], ['100B/s', 100], [' 1TiB/s ', 2 ** 40], ['0', 0], ['0MiB/s', 0],
    ['unlimited', Infinity], ['off', Infinity], ['OFF', Infinity],
  ];
  for (const [text, want] of good) t.equal(parseRate(text), want, text);
  for (const bad of ['', '20', '20MiB', '20mib/s', '20KB/s', '-1MiB/s', '1.MiB/s', 'fast', '10constructor/s', '0.1B/s', 'NaN', 'Infinity', '2 MiB/s/s']) {
    t.ok(usage(() => parseRate(bad), `'${bad}'`), `'${bad}' is HF_USAGE naming the text, with an example`);
  }
});

t.test('parseWindows reads days, ranges, lists and times', async (t) => {
  const [w, ...rest] = parseWindows('Mon-Fri 08:00-18:00=2MiB/s');
  t.same(rest, []);
  t.same([...w!.days].sort(), [1, 2, 3, 4, 5]);
  t.same([w!.start, w!.end, w!.rate], [480, 1080, 2 * MiB]);
  const all = parseWindows(' Fri-Mon 22:00-06:00=1MiB/s ;Sat, Sun 00:00-24:00=unlimited; * 9:30-10:00=0;12:00-13:00=10MB/s;');
  t.equal(all.length, 4);
  t.same([...all[0]!.days].sort(), [0, 1, 5, 6], 'Fri-Mon wraps over the weekend');
  t.same([all[0]!.start, all[0]!.end], [1320, 360]);
  t.same([...all[1]!.days].sort(), [0, 6]);
  t.same([all[1]!.start, all[1]!.end, all[1]!.rate], [0, 1440, Infinity]);
  t.same([all[2]!.days.size, all[2]!.start, all[2]!.rate], [7, 570, 0]);
  t.same([all[3]!.days.size, all[3]!.rate], [7, 10_000_000], 'omitted days mean every day');
  t.same(parseWindows('  '), []);
  for (const bad of [
    'Mon-Fri 08:00-18:00', 'Xyz 08:00-09:00=1MiB/s', 'Mon-Tue-Wed 08:00-09:00=1MiB/s', '08:00-25:00=1MiB/s',
    '24:00-01:00=1MiB/s', '08:00-08:00=1MiB/s', '08:60-09:00=1MiB/s', 'Mon-Fri 08:00-18:00=fast', 'Mon 8-18=1MiB/s',
  ]) t.ok(usage(() => parseWindows(`Sat 00:00-24:00=1MiB/s; ${bad}`), `'${bad}'`), `'${bad}' is HF_USAGE naming the window`);
});

t.test('rateAt: weekday ranges, wrap past midnight, first match wins', async (t) => {
  // 6 January 2025 is a Monday; local time, like the matcher.
  const at = (day: number, h: number, m = 0) => new Date(2025, 0, 6 + day, h, m);
  const [MON, TUE, WED, THU, FRI, SAT, SUN] = [0, 1, 2, 3, 4, 5, 6];
  const base = 20 * MiB;
  const office = parseWindows('Mon-Fri 08:00-18:00=2MiB/s');
  t.equal(rateAt(base, office, at(MON, 7, 59)), base);
  t.equal(rateAt(base, office, at(MON, 8, 0)), 2 * MiB);
  t.equal(rateAt(base, office, at(FRI, 17, 59)), 2 * MiB);
  t.equal(rateAt(base, office, at(FRI, 18, 0)), base);
  t.equal(rateAt(base, office, at(SAT, 12)), base);

  const night = parseWindows('Fri 22:00-06:00=1MiB/s');
  t.equal(rateAt(base, night, at(FRI, 23)), MiB);
  t.equal(rateAt(base, night, at(SAT, 5, 59)), MiB, 'the hours after midnight belong to the start day');
  t.equal(rateAt(base, night, at(SAT, 6)), base);
  t.equal(rateAt(base, night, at(FRI, 5)), base, 'Friday early morning belongs to Thursday');
  t.equal(rateAt(base, night, at(SAT, 23)), base);

  const weekend = parseWindows('Fri-Mon 09:00-17:00=500KiB/s');
  for (const d of [FRI, SAT, SUN, MON]) t.equal(rateAt(base, weekend, at(d, 10)), 512_000, `day ${d} is in Fri-Mon`);
  for (const d of [TUE, WED, THU]) t.equal(rateAt(base, weekend, at(d, 10)), base, `day ${d} is not in Fri-Mon`);

  const first = parseWindows('Sat,Sun 00:00-24:00=unlimited; 00:00-24:00=1MiB/s');
  t.equal(rateAt(base, first, at(SAT, 23, 59)), Infinity);
  t.equal(rateAt(base, first, at(MON, 0)), MiB);
  t.equal(rateAt(base, [...first].reverse(), at(SAT, 12)), MiB, 'the first matching window wins');
  t.equal(rateAt(base, [], at(SAT, 12)), base);
});

t.test('64 KiB writes at 20 MiB/s for 12 s: 10 s average within 2%, no second over 1.5×', async (t) => {
  const clock = new FakeClock();
  const log = await clock.run(sender(new TokenBucket({ rate: 20 * MiB, clock }), clock, 64 * KiB, 12_000));
  assertPaced(t, log, 20 * MiB, 12);
});

t.test('1 MiB writes at 2 MiB/s and at 1 MiB/s (larger than the burst: granted into debt)', async (t) => {
  for (const rate of [2 * MiB, MiB]) {
    const clock = new FakeClock();
    const log = await clock.run(sender(new TokenBucket({ rate, clock }), clock, MiB, 12_000));
    assertPaced(t, log, rate, 12);
    t.equal(log[0]!.at, 0, 'the first request goes at once (the bucket starts full)');
  }
});

t.test('a window switches the rate mid-run', async (t) => {
  const start = new Date(2025, 0, 6, 7, 59, 55); // Monday, 5 s before the window opens
  const clock = new FakeClock(start.getTime());
  const windows = parseWindows('Mon-Fri 08:00-18:00=2MiB/s');
  const bucket = new TokenBucket({ rate: () => rateAt(20 * MiB, windows, new Date(clock.now())), clock });
  const log = await clock.run(sender(bucket, clock, 64 * KiB, 15_000));
  for (let s = 0; s < 5; s++) t.ok(bytesIn(log, s * 1000, s * 1000 + 1000) >= 19 * MiB, `second ${s} runs at the base rate`);
  for (let s = 5; s < 15; s++) t.ok(bytesIn(log, s * 1000, s * 1000 + 1000) <= 3 * MiB, `second ${s} is within 1.5 × the window rate`);
  const avg = bytesIn(log, 6000, 15_000) / 9;
  t.ok(Math.abs(avg / (2 * MiB) - 1) <= 0.02, `average in the window ${(avg / MiB).toFixed(3)} MiB/s`);
});

t.test('rate 0 pauses until the rate rises again', async (t) => {
  const clock = new FakeClock();
  let rate = 0;
  const bucket = new TokenBucket({ rate: () => rate, clock });
  void clock.sleep(5000).then(() => (rate = 2 * MiB));
  await clock.run(bucket.take(64 * KiB));
  t.ok(clock.now() >= 5000 && clock.now() <= 6000, `granted at ${clock.now()} ms, within a poll of resuming`);
  const log = await clock.run(sender(bucket, clock, 64 * KiB, 10_000));
  t.ok(Math.abs(bytesIn(log, 0, 10_000) / 10 / (2 * MiB) - 1) <= 0.02, 'then runs at the new rate');
});

t.test('abort while waiting rejects with HF_INTERRUPTED and lets the next waiter go', async (t) => {
  const clock = new FakeClock();
  let rate = 0;
  const bucket = new TokenBucket({ rate: () => rate, clock });
  const ac = new AbortController();
  void clock.sleep(2500).then(() => ac.abort(new Error('job cancelled')));
  const err = await clock.run(bucket.take(KiB, ac.signal)).catch((e: unknown) => e);
  t.ok(err instanceof HoldfastError && err.code === 'HF_INTERRUPTED', 'HF_INTERRUPTED');
  t.equal((err as Error).cause, ac.signal.reason, 'the reason is the cause');
  t.equal(clock.now(), 2500, 'rejected when the signal aborted');
  await t.rejects(bucket.take(KiB, ac.signal), { code: 'HF_INTERRUPTED' }, 'an aborted signal rejects at once');

  rate = MiB;
  await clock.run(bucket.take(MiB)); // leaves the bucket in debt
  const second = new AbortController();
  const order: string[] = [];
  const a = bucket.take(64 * KiB, second.signal).then(() => order.push('aborted one'), () => order.push('a rejected'));
  const b = bucket.take(64 * KiB).then(() => order.push('b'));
  void clock.sleep(100).then(() => second.abort());
  await clock.run(Promise.all([a, b]));
  t.same(order, ['a rejected', 'b']);
});

t.test('waiters are served FIFO: a small request does not overtake a large one', async (t) => {
  const clock = new FakeClock();
  const bucket = new TokenBucket({ rate: MiB, clock });
  const order: number[] = [];
  const sizes = [MiB, 512 * KiB, 1, 64 * KiB, 1, 256 * KiB];
  await clock.run(Promise.all(sizes.map((n, i) => bucket.take(n).then(() => order.push(i)))));
  t.same(order, [0, 1, 2, 3, 4, 5]);
});

t.test('rate Infinity never waits', async (t) => {
  const clock = new FakeClock();
  const bucket = new TokenBucket({ rate: parseRate('unlimited'), clock });
  for (let i = 0; i < 1000; i++) await bucket.take(GiB);
  t.equal(clock.now(), 0);
  t.equal(clock.pending, 0, 'no sleep was started');
});

t.test('RateLimiter: per-target and global buckets hold together, without deadlock', async (t) => {
  const clock = new FakeClock();
  const global = new TokenBucket({ rate: 4 * MiB, clock });
  const x = new TokenBucket({ rate: 3 * MiB, clock });
  const y = new TokenBucket({ rate: 3 * MiB, clock });
  const run = (b: TokenBucket) => sender(new RateLimiter([b, global]), clock, 64 * KiB, 12_000);
  const [x1, y1, x2] = await clock.run(Promise.all([run(x), run(y), run(x)])); // two streams to x, one to y
  const lx = [...x1, ...x2].sort((a, b) => a.at - b.at);
  const both = [...lx, ...y1].sort((a, b) => a.at - b.at);
  assertPaced(t, both, 4 * MiB, 12);
  for (const l of [lx, y1]) t.ok(maxPerSecond(l) <= 1.5 * 3 * MiB, 'each target stays within its own bound');
  const share = bytesIn(lx, 0, 12_000) / bytesIn(both, 0, 12_000);
  t.ok(share > 0.45 && share < 0.55, `the global rate is shared per target: x's two streams get half (${share.toFixed(2)})`);

  // A slow target does not let the other overrun the global rate, and the global rate is still used.
  const clock2 = new FakeClock();
  const g2 = new TokenBucket({ rate: 4 * MiB, clock: clock2 });
  const slow = new TokenBucket({ rate: MiB, clock: clock2 });
  const logs = await clock2.run(Promise.all([slow, new TokenBucket({ rate: 20 * MiB, clock: clock2 })]
    .map((b) => sender(new RateLimiter([b, g2]), clock2, 64 * KiB, 12_000))));
  const all = logs.flat().sort((a, b) => a.at - b.at);
  t.ok(maxPerSecond(all) <= 1.5 * 4 * MiB, 'global bound holds');
  t.ok(maxPerSecond(logs[0]!) <= 1.5 * MiB, 'slow target bound holds');
  t.ok(bytesIn(all, 0, 12_000) / 12 >= 0.9 * 4 * MiB, `global rate is used (${(bytesIn(all, 0, 12_000) / 12 / MiB).toFixed(2)} MiB/s)`);
});

t.test('the real clock paces at all (loose bound)', async (t) => {
  const bucket = new TokenBucket({ rate: MiB }); // burst 0.1 MiB
  const began = performance.now();
  for (let i = 0; i < 8; i++) await bucket.take(64 * KiB);
  const ms = performance.now() - began;
  t.ok(ms >= 300 && ms < 1500, `512 KiB at 1 MiB/s took ${ms.toFixed(0)} ms (≈ 400 expected)`);
});
