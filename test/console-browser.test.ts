// The console in a real browser: Debian's chromium, driven by playwright-core,
// against the real engine and console processes (and a real offsite store).
// An admin's first hour: set the password, log in, add a folder, back it up
// while watching the progress, browse the snapshot, download a file and a
// zip and compare them with the originals, restore a folder somewhere else,
// add an offsite target and see it catch up. Each page is kept as a
// screenshot under test-artifacts/console/ (HOLDFAST_ARTIFACTS moves it), at
// 1280×800 and at a phone's 390×844.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { chromium, type Browser, type Page } from 'playwright-core';
import t, { type Test } from 'tap';

import { startAppliance } from './helpers/appliance.ts';
import { makePki, startStore } from './helpers/store.ts';
import { tmpDir } from './helpers/tmp.ts';

// what page.evaluate() and friends run in the browser refers to the page's globals
declare const document: any, window: any, location: any;

const CHROMIUM = process.env.HOLDFAST_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(process.env.HOLDFAST_ARTIFACTS ?? path.join(import.meta.dirname, '..', 'test-artifacts'), 'console');
const PASSWORD = 'correct horse battery staple';
const WAIT = { timeout: 60_000 };

async function launch(t: Test): Promise<Browser> {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium)`);
  // a browser server, so that the test knows chromium's pid and kills it at the end
  const server = await chromium.launchServer({
    executablePath: CHROMIUM,
    // a fresh profile each launch (playwright makes a temporary one); nothing reaches out
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-dev-shm-usage'],
    headless: true,
  });
  const pid = server.process().pid;
  t.teardown(async () => {
    await server.close().catch(() => undefined);
    if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  });
  const browser = await chromium.connect(server.wsEndpoint());
  t.teardown(() => browser.close().catch(() => undefined));
  return browser;
}

/**
 * Collects what went wrong in a page: script errors, console errors, and
 * answers of 400 or more, except the two 401s the console expects (the
 * "am I logged in?" probe before login, and a wrong password).
 */
function watchPage(page: Page, label: string): string[] {
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('console', (m) => {
    // failed loads are judged by their response below
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`${label}: console error: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() < 400) return;
    const what = `${r.request().method()} ${new URL(r.url()).pathname}`;
    if (r.status() === 401 && (what === 'GET /api/v1/session' || what === 'POST /api/v1/login')) return;
    problems.push(`${label}: ${what} answered ${r.status()}`);
  });
  return problems;
}

function shooter(dir: string) {
  fs.mkdirSync(dir, { recursive: true });
  let n = 0;
  return async (page: Page, name: string) => {
    n++;
    const file = path.join(dir, `${String(n).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    return file;
  };
}

/** True when the page needs no sideways scrolling (the layout fits the screen). */
const fitsWidth = (page: Page) => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);

/** Writes the source tree: odd names, a nested folder, and enough data that a backup takes a few seconds. */
function makeSource(src: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const put = (rel: string, data: Buffer) => {
    const p = path.join(src, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
    files.set(rel, data);
  };
  put('Reports/Q3 résumé & plan.txt', Buffer.from('Quarterly numbers, version 1\n'.repeat(100)));
  put('Reports/2026/ledger.csv', Buffer.from(Array.from({ length: 5000 }, (_, i) => `${i};${i * 7 % 13};€\n`).join('')));
  put('Reports/2026/empty.dat', Buffer.alloc(0));
  put('Photos/scan #1.bin', crypto.randomBytes(3 << 20));
  // ~480 MiB of incompressible data in 12 files, so the backup runs long
  // enough (several progress ticks of 500 ms) to be watched
  for (let i = 0; i < 12; i++) put(`Bulk/part-${i}.bin`, crypto.randomBytes(40 << 20));
  return files;
}

t.test('the console in chromium: setup to restore, at 1280×800 and on a phone', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  const restoreRoot = path.join(dir, 'restores-elsewhere');
  fs.mkdirSync(restoreRoot);
  const files = makeSource(src);
  const app = await startAppliance(t, { dataDir: path.join(dir, 'data'), restoreRoots: [restoreRoot] });
  const pki = await makePki(path.join(dir, 'pki'), ['acme']);
  const store = await startStore(t, { dir: path.join(dir, 'store'), pki });

  const browser = await launch(t);
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  t.teardown(() => ctx.close().catch(() => undefined));
  const page = await ctx.newPage();
  const problems = watchPage(page, 'desktop');
  const shot = shooter(path.join(ARTIFACTS, 'desktop'));

  // ---- first run: the admin password, then the recovery key, shown once
  await page.goto(app.url);
  await page.waitForSelector('#setup-form', WAIT);
  await shot(page, 'setup');
  await page.fill('#setup-form input[name=password]', PASSWORD);
  await page.fill('#setup-form input[name=password2]', PASSWORD);
  await page.click('#setup-form button[type=submit]');
  const recovery = (await page.textContent('#recovery-key', WAIT))!.trim();
  t.match(recovery, /^[0-9A-Z]{5}(-[0-9A-Z]{5}){10}$/, 'the first run shows the recovery key');
  await shot(page, 'recovery-key');
  t.equal(await page.isDisabled('#recovery-done'), true, 'continuing needs the "I have stored it" box ticked');
  await page.check('#recovery-stored');
  await page.click('#recovery-done');
  await page.waitForSelector('#sources-table', WAIT);
  await shot(page, 'dashboard-empty');
  t.match(await page.textContent('#main'), /no offsite copy|No sources/i, 'an empty appliance says what to do next');

  // ---- log out and in again
  await page.click('#logout');
  await page.waitForSelector('#login-form', WAIT);
  await page.fill('#login-form input[name=user]', 'admin');
  await page.fill('#login-form input[name=password]', 'not the password');
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => (document.querySelector('#login-error')?.textContent ?? '').length > 0, null, WAIT);
  t.match(await page.textContent('#login-error'), /wrong|password/i, 'a wrong password is said so');
  await shot(page, 'login-wrong-password');
  await page.fill('#login-form input[name=password]', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#sources-table', WAIT);
  const cookies = await ctx.cookies();
  const session = cookies.find((c) => c.name === 'hf_session');
  t.ok(session && session.httpOnly && session.secure && session.sameSite === 'Strict', 'the session cookie is HttpOnly, Secure and SameSite=Strict');
  t.equal(await page.evaluate(() => document.cookie), '', 'and the page\'s scripts cannot read it');

  // ---- a local source, with "test connection"
  await page.click('a[href="#/sources"]');
  await page.click('#add-source', WAIT);
  await page.fill('#source-form input[name=name]', 'files');
  await page.fill('#source-form textarea[name=paths]', src);
  await page.click('#test-connection');
  await page.waitForSelector('#test-result .ok, #test-result .error', WAIT);
  t.match(await page.textContent('#test-result'), /Connected/, 'test connection reaches the folder');
  t.match(await page.textContent('#test-result'), /Bulk|Photos|Reports/, 'and shows what is in it');
  await shot(page, 'sources-test-connection');
  await page.click('#source-form button[type=submit]');
  await page.waitForSelector('button[data-backup="files"]', WAIT);
  await shot(page, 'sources');

  // ---- a backup from the console, watched live
  await page.click('button[data-backup="files"]');
  await page.waitForSelector('#jobs-list', WAIT);
  const seen: { state: string; text: string; bar: string | null }[] = [];
  let runningShot = false;
  for (const end = Date.now() + 300_000; Date.now() < end;) {
    const line = await page.$eval('#jobs-list .job', (el) => ({
      state: (el.querySelector('.badge')?.textContent ?? '').trim(),
      text: el.textContent ?? '',
      bar: el.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow') ?? null,
    })).catch(() => null);
    if (line) {
      seen.push(line);
      if (line.state === 'running' && /\d+ files/.test(line.text) && !runningShot) { await shot(page, 'backup-running'); runningShot = true; }
      if (['done', 'failed', 'cancelled'].includes(line.state)) break;
    }
    await page.waitForTimeout(100);
  }
  const last = seen.at(-1);
  t.equal(last?.state, 'done', `the backup finishes: ${last?.text}`);
  const running = seen.filter((s) => s.state === 'running');
  t.ok(running.some((s) => s.bar !== null), 'while it runs, a progress bar shows a percentage');
  t.ok(running.some((s) => /\/s/.test(s.text)) && running.some((s) => /left/.test(s.text)), 'with the speed and the time left');
  const percents = new Set(running.map((s) => s.bar).filter((b) => b !== null));
  t.ok(percents.size >= 2, `and moves on as the backup goes (${[...percents].join(', ')} %)`);
  t.match(last?.text, /snapshot [0-9a-f]{8}: 16 files/, 'the finished job names its snapshot and what it read');
  await shot(page, 'backup-done');

  // ---- browse the snapshot, down to the nested folder
  await page.click('a[href="#/snapshots"]');
  await page.waitForSelector('#snapshots-table a', WAIT);
  await shot(page, 'snapshots');
  await page.click('#snapshots-table a');
  await page.waitForSelector('#entries', WAIT);
  for (const part of [...src.split('/').filter(Boolean), 'Reports']) {
    await page.click(`#entries a.dir:text-is("${part}/")`, WAIT);
    await page.waitForFunction((p) => [...document.querySelectorAll('.crumbs a')].some((a) => a.textContent === p), part, WAIT);
  }
  const names = await page.$$eval('#entries tbody tr td:first-child', (tds) => tds.map((td) => td.textContent));
  t.same(names, ['2026/', 'Q3 résumé & plan.txt'], 'the folder lists its entries, odd names as they are');
  await shot(page, 'browse');

  // ---- download a file: the same bytes as the original
  const fileRel = 'Reports/Q3 résumé & plan.txt';
  const [download] = await Promise.all([page.waitForEvent('download', WAIT), page.click(`a[data-download="${path.join(src, fileRel)}"]`)]);
  t.equal(download.suggestedFilename(), 'Q3 résumé & plan.txt', 'the download keeps the file\'s name');
  const downloaded = path.join(dir, 'download.txt');
  await download.saveAs(downloaded);
  t.ok(fs.readFileSync(downloaded).equals(files.get(fileRel)!), 'the downloaded file has the original bytes');

  // ---- a folder as a zip: every file in it, the same bytes
  await page.click('#entries a.dir:text-is("2026/")');
  await page.waitForSelector('#entries tbody tr', WAIT);
  await page.click('.crumbs a:text-is("Reports")');
  await page.waitForSelector('#entries a.dir:text-is("2026/")', WAIT);
  const [zip] = await Promise.all([page.waitForEvent('download', WAIT), page.click(`a[data-zip="${path.join(src, 'Reports', '2026')}"]`)]);
  const zipFile = path.join(dir, 'download.zip');
  await zip.saveAs(zipFile);
  const unzipped = spawnSync('python3', ['-c', `
import json, sys, zipfile, base64
z = zipfile.ZipFile(sys.argv[1])
bad = z.testzip()
print(json.dumps({'bad': bad, 'files': {i.filename: base64.b64encode(z.read(i)).decode() for i in z.infolist() if not i.is_dir()}}))
`, zipFile], { encoding: 'utf8' });
  t.equal(unzipped.status, 0, `python's zipfile reads the zip ${unzipped.stderr}`);
  const inZip = JSON.parse(unzipped.stdout) as { bad: string | null; files: Record<string, string> };
  t.equal(inZip.bad, null, 'every CRC in the zip checks');
  t.same(Object.keys(inZip.files).sort(), ['2026/empty.dat', '2026/ledger.csv'], 'the zip holds the folder\'s files under its name');
  t.ok(Buffer.from(inZip.files['2026/ledger.csv']!, 'base64').equals(files.get('Reports/2026/ledger.csv')!), 'with the original bytes');

  // ---- restore the folder to another path, with live progress
  await page.click(`.crumbs a:text-is("${path.basename(src)}")`);
  await page.click(`button[data-restore="${path.join(src, 'Reports')}"]`, WAIT);
  await page.waitForSelector('dialog[open] #restore-target', WAIT);
  const into = path.join(restoreRoot, 'from-console');
  await page.fill('#restore-target', into);
  await shot(page, 'restore-dialog');
  await page.click('#restore-start');
  await page.waitForFunction(() => document.querySelector('dialog[open] .job .badge')?.textContent?.trim() === 'done', null, WAIT);
  t.match(await page.textContent('dialog[open]'), /files .* restored to/, 'the dialog shows the restore finishing');
  await shot(page, 'restore-done');
  await page.click('dialog[open] button:text-is("Close")');
  for (const rel of ['Reports/Q3 résumé & plan.txt', 'Reports/2026/ledger.csv', 'Reports/2026/empty.dat']) {
    const restored = path.join(into, src, rel);
    t.ok(fs.existsSync(restored) && fs.readFileSync(restored).equals(files.get(rel)!), `restored ${rel}: the original bytes`);
  }
  t.notOk(fs.existsSync(path.join(into, src, 'Bulk')), 'only the chosen folder is restored');

  // ---- an offsite target: add it, test it, replicate, see it up to date
  await page.click('a[href="#/replication"]');
  await page.waitForSelector('#target-form', WAIT);
  await page.fill('#target-form input[name=name]', 'offsite');
  await page.fill('#target-form input[name=endpoints]', store.endpoint);
  await page.fill('#target-form input[name=rate]', '200MiB/s');
  await page.fill('#target-form textarea[name=ca]', fs.readFileSync(pki.ca, 'utf8'));
  await page.fill('#target-form textarea[name=cert]', fs.readFileSync(pki.cert('acme').cert, 'utf8'));
  await page.fill('#target-form textarea[name=key]', fs.readFileSync(pki.cert('acme').key, 'utf8'));
  await page.click('#target-form button[type=submit]');
  const card = '[data-target="offsite"]';
  await page.waitForSelector(card, WAIT);
  t.match(await page.textContent(`${card} .lag`), /pending/, 'a new target shows the snapshots it lacks');
  await page.click(`${card} button:text-is("Test endpoints")`);
  await page.waitForSelector(`${card} .ok, ${card} .error`, WAIT);
  t.match(await page.textContent(card), /reachable, [\d.]+ ms/, 'testing the endpoint reaches the store');
  await shot(page, 'replication-new-target');
  await page.click(`${card} button:text-is("Replicate now")`);
  await page.waitForSelector('#jobs-list', WAIT);
  await page.waitForFunction(() => {
    const j = [...document.querySelectorAll('#jobs-list .job')].find((el) => /Replication/.test(el.textContent ?? ''));
    return ['done', 'failed'].includes(j?.querySelector('.badge')?.textContent?.trim() ?? '');
  }, null, { timeout: 300_000 });
  await page.click('a[href="#/replication"]');
  await page.waitForSelector(card, WAIT);
  t.equal((await page.textContent(`${card} .lag`))?.trim(), 'up to date', 'after replicating, the target is up to date');
  t.notMatch(await page.textContent(card), /never/, 'with a last copy time');
  await shot(page, 'replication');

  // ---- the dashboard now: last run, storage, the target's lag
  await page.click('a[href="#/"]');
  await page.waitForSelector('#sources-table', WAIT);
  const dash = await page.textContent('#main');
  t.match(dash, /files/, 'the dashboard lists the source');
  t.match(dash, /offsite/, 'and the target');
  t.ok(await page.$('#main svg'), 'with a chart');
  await shot(page, 'dashboard');
  for (const [name, href] of [['schedules', '#/schedules'], ['jobs', '#/jobs'], ['settings', '#/settings']] as const) {
    await page.click(`a[href="${href}"]`);
    await page.waitForSelector('#main h1', WAIT);
    await page.waitForLoadState('networkidle');
    await shot(page, name);
  }
  t.match(await page.textContent('#audit'), /restore/, 'the audit log shows the restore');
  t.ok(await fitsWidth(page), 'no page needs sideways scrolling at 1280×800');

  // ---- a phone: same pages, no sideways scrolling
  const phone = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  t.teardown(() => phone.close().catch(() => undefined));
  const p2 = await phone.newPage();
  const phoneProblems = watchPage(p2, 'phone');
  const shot2 = shooter(path.join(ARTIFACTS, 'phone'));
  await p2.goto(app.url);
  await p2.waitForSelector('#login-form', WAIT);
  await shot2(p2, 'login');
  await p2.fill('#login-form input[name=user]', 'admin');
  await p2.fill('#login-form input[name=password]', PASSWORD);
  await p2.click('#login-form button[type=submit]');
  await p2.waitForSelector('#sources-table', WAIT);
  const wide: string[] = [];
  for (const [name, hash] of [['dashboard', '#/'], ['sources', '#/sources'], ['schedules', '#/schedules'], ['snapshots', '#/snapshots'], ['jobs', '#/jobs'], ['replication', '#/replication'], ['settings', '#/settings']] as const) {
    await p2.evaluate((h) => { location.hash = h; }, hash);
    await p2.waitForSelector('#main h1, #main #sources-table', WAIT);
    await p2.waitForLoadState('networkidle');
    await shot2(p2, name);
    if (!(await fitsWidth(p2))) wide.push(name);
  }
  await p2.click('#snapshots-table a').catch(async () => { await p2.evaluate(() => { location.hash = '#/snapshots'; }); await p2.click('#snapshots-table a'); });
  await p2.waitForSelector('#entries', WAIT);
  await shot2(p2, 'browse');
  if (!(await fitsWidth(p2))) wide.push('browse');
  t.same(wide, [], 'on a phone, no page needs sideways scrolling (tables scroll inside their card)');

  t.same([...problems, ...phoneProblems], [], 'no script errors in the browser');
  t.comment(`screenshots in ${ARTIFACTS}`);
});
