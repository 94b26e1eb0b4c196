// Output of the benchmark: human lines and tables, one JSON line per
// measurement, and formatting of numbers.

/** Where human-readable lines go: stdout, or stderr when stdout must hold JSON only. */
let humanToStderr = false;

export function humanOnStderr(on: boolean): void {
  humanToStderr = on;
}

/** A line for people. */
export function say(line = ''): void {
  (humanToStderr ? process.stderr : process.stdout).write(`${line}\n`);
}

/** A diagnostic: always stderr. */
export function note(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** One machine-readable line on stdout. */
export function emit(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

/** Left-aligned first column, right-aligned others. */
export function table(header: string[], rows: string[][]): void {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  say(fmt(header));
  say(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) say(fmt(r));
}

export function round(n: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function secs(s: number): string {
  return `${s.toFixed(2)} s`;
}

export function ratio(r: number): string {
  return `${r.toFixed(2)}x`;
}

export function passMark(ok: boolean): string {
  return ok ? 'PASS' : 'FAIL';
}

export function heading(title: string): void {
  say('');
  say(`== ${title} ==`);
}
