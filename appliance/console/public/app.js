// Holdfast console: a small single-page app over /api/v1 (the engine's API,
// relayed by the console). No framework: DOM built with h() (text is always
// set as text, never parsed as HTML), hash routes, live job updates from
// server-sent events.
'use strict';

// ---------- helpers ----------
const $ = (sel, root = document) => root.querySelector(sel);

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'styleWidth') e.style.width = v; // CSSOM, which the CSP allows (style attributes it does not)
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

/** Appends children as h() does: arrays flattened, null/false skipped, strings as text. */
function put(parent, ...kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    parent.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return parent;
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${u[i]}`;
}
function duration(s) {
  if (s === null || s === undefined) return '–';
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}
function when(t) {
  if (!t) return '–';
  const d = typeof t === 'number' ? new Date(t) : new Date(t);
  const ago = (Date.now() - d.getTime()) / 1000;
  const rel = ago >= 0 ? (ago < 90 ? 'just now' : `${duration(ago)} ago`) : `in ${duration(-ago)}`;
  return `${d.toLocaleString()} (${rel})`;
}
function badge(state) { return h('span', { class: `badge s-${state}` }, state); }
function toast(msg, ms = 4000) {
  const t = $('#toast');
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, ms);
}

// ---------- API ----------
const session = { user: null, role: null, csrf: null };
const PERMS = { viewer: ['read'], operator: ['read', 'run', 'restore'], admin: ['read', 'run', 'restore', 'configure'] };
const can = (p) => !!session.role && PERMS[session.role].includes(p);

class ApiError extends Error {
  constructor(status, code, message, details) { super(message); this.status = status; this.code = code; this.details = details; }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (session.csrf && method !== 'GET') headers['x-csrf-token'] = session.csrf;
  const r = await fetch(`/api/v1${path}`, { method, headers, body: body !== undefined ? JSON.stringify(body) : undefined, credentials: 'same-origin' });
  const text = await r.text();
  const json = text ? JSON.parse(text) : {};
  if (!r.ok) {
    const e = json.error || {};
    if (r.status === 401 && !['/login', '/setup'].includes(path)) { session.user = null; go('#/login'); }
    throw new ApiError(r.status, e.code || 'HF_IO', e.message || `HTTP ${r.status}`, e.details);
  }
  return json;
}

/** Runs an action from a button: disables it meanwhile, shows errors. */
function act(button, fn) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    const b = button || (ev && ev.currentTarget);
    if (b) b.disabled = true;
    try { await fn(); } catch (err) { toast(`${err.code || 'error'}: ${err.message}`, 8000); } finally { if (b) b.disabled = false; }
  };
}

// ---------- live jobs ----------
const jobs = new Map();
const jobListeners = new Set();
let events = null;
function connectEvents() {
  if (events) events.close();
  events = new EventSource('/api/v1/events');
  events.addEventListener('hello', (e) => { for (const j of JSON.parse(e.data).running) jobs.set(j.id, j); notifyJobs(); });
  events.addEventListener('job', (e) => { const { job } = JSON.parse(e.data); jobs.set(job.id, job); notifyJobs(job); });
  events.onerror = () => { /* the browser reconnects by itself */ };
}
function notifyJobs(job) { for (const fn of jobListeners) fn(job); }
function onJobs(fn) { jobListeners.add(fn); return () => jobListeners.delete(fn); }

function jobTitle(j) {
  const names = { backup: 'Backup', replicate: 'Replication', prune: 'Retention (prune)', verify: 'Verify', restore: 'Restore' };
  return `${names[j.kind] || j.kind}${j.subject ? ` of ${j.subject}` : j.kind === 'replicate' ? ' to all targets' : ''}`;
}
function progressBar(p) {
  const pct = p && typeof p.percent === 'number' ? p.percent : null;
  return h('div', { class: `progress${pct === null ? ' indeterminate' : ''}`, role: 'progressbar', 'aria-valuenow': pct === null ? null : pct, 'aria-valuemin': 0, 'aria-valuemax': 100 },
    h('span', { styleWidth: `${pct === null ? 30 : pct}%` }));
}
function jobLine(j) {
  const p = j.progress || {};
  const facts = [];
  if (p.phase) facts.push(p.phase);
  if (typeof p.percent === 'number') facts.push(`${p.percent}%`);
  if (p.files !== undefined) facts.push(`${p.files} files`);
  if (p.bytes !== undefined) facts.push(bytes(p.bytes) + (p.expectedBytes ? ` of ${bytes(p.expectedBytes)}` : p.bytesTotal ? ` of ${bytes(p.bytesTotal)}` : ''));
  if (p.counting) facts.push(`still counting the source: ${bytes(p.counting.bytes)} in ${p.counting.files} files so far`);
  if (p.rate) facts.push(`${bytes(p.rate)}/s`);
  if (p.etaSeconds !== null && p.etaSeconds !== undefined && j.state === 'running') facts.push(`about ${duration(p.etaSeconds)} left`);
  return h('div', { class: 'job', dataset: { job: j.id } },
    h('div', { class: 'row spread' }, h('strong', {}, jobTitle(j)), badge(j.state)),
    j.state === 'running' || j.state === 'queued' ? progressBar(p) : null,
    h('div', { class: 'muted' }, facts.join(' · ') || (j.state === 'queued' ? 'waiting to start' : '')),
    j.error ? h('div', { class: 'error' }, `${j.error.code}: ${j.error.message}`) : null,
    j.state === 'done' && j.result ? h('div', { class: 'muted' }, resultLine(j)) : null);
}
function resultLine(j) {
  const r = j.result || {};
  if (j.kind === 'backup') return `snapshot ${String(r.snapshot || '').slice(0, 8)}: ${r.files} files, ${bytes(r.bytesRead)} read, ${bytes(r.bytesAdded)} added in ${duration(r.seconds)}${r.warnings ? `; ${r.warnings} warning(s)` : ''}`;
  if (j.kind === 'restore') return `${r.files} files (${bytes(r.bytes)}) restored to ${r.target}${r.failed ? `; ${r.failed} failed` : ''}`;
  if (j.kind === 'verify') return `slice ${r.slice + 1} of ${r.of}: ${r.packsRead} packs read, no damage`;
  if (j.kind === 'prune') return `${r.forgotten || 0} snapshot(s) forgotten; ${bytes(r.bytesBefore)} → ${bytes(r.bytesAfter)}`;
  if (j.kind === 'replicate') return (r.targets || []).map((t) => `${t.target}: ${t.ok ? `${bytes(t.sentBytes)} sent` : 'failed'}`).join('; ');
  return '';
}
/** A live view of one job: re-rendered on each event for it. */
function liveJob(job, onDone) {
  const box = h('div', {}, jobLine(job));
  const off = onJobs((j) => {
    if (!j || j.id !== job.id) return;
    box.replaceChildren(jobLine(j));
    if (['done', 'failed', 'cancelled'].includes(j.state)) { off(); if (onDone) onDone(j); }
  });
  cleanups.push(off);
  return box;
}

// ---------- routing ----------
let cleanups = [];
const main = () => $('#main');
function go(hash) { if (location.hash !== hash) location.hash = hash; else render(); }
function params() { return new URLSearchParams(location.hash.split('?')[1] || ''); }

const routes = [
  [/^#\/setup$/, setupPage, false],
  [/^#\/login$/, loginPage, false],
  [/^#\/?$/, dashboardPage, true],
  [/^#\/sources$/, sourcesPage, true],
  [/^#\/schedules$/, schedulesPage, true],
  [/^#\/snapshots$/, snapshotsPage, true],
  [/^#\/snapshots\/([0-9a-f]{8,64})$/, browsePage, true],
  [/^#\/search$/, searchPage, true],
  [/^#\/jobs$/, jobsPage, true],
  [/^#\/replication$/, replicationPage, true],
  [/^#\/settings$/, settingsPage, true],
];

async function render() {
  for (const c of cleanups) c();
  cleanups = [];
  const hash = (location.hash || '#/').split('?')[0];
  const r = routes.find(([re]) => re.test(hash)) || routes[2];
  const m = hash.match(r[0]);
  if (r[2] && !session.user) {
    const st = await api('GET', '/status');
    return go(st.setupNeeded ? '#/setup' : '#/login');
  }
  $('#top').hidden = !session.user;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === hash || (hash.startsWith('#/snapshots') && a.getAttribute('href') === '#/snapshots'));
  $('#nav').classList.remove('open');
  const page = h('div', {});
  main().replaceChildren(page);
  try {
    await r[1](page, ...(m ? m.slice(1) : []));
  } catch (err) {
    page.replaceChildren(h('h1', {}, 'Something went wrong'), h('p', { class: 'error' }, `${err.code || 'error'}: ${err.message}`));
  }
}

// ---------- setup and login ----------
async function setupPage(page) {
  const st = await api('GET', '/status');
  if (!st.setupNeeded) return go('#/login');
  const user = h('input', { name: 'user', value: 'admin', autocomplete: 'username', required: true });
  const pw = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true, minlength: 10 });
  const pw2 = h('input', { name: 'password2', type: 'password', autocomplete: 'new-password', required: true });
  const msg = h('p', { class: 'error' });
  const form = h('form', { class: 'card stack', id: 'setup-form' },
    h('h1', {}, 'Welcome to Holdfast'),
    h('p', {}, `This appliance (${st.hostname}) is not set up yet. Choose the first administrator's name and password.`),
    h('label', {}, 'User name', user), h('label', {}, 'Password (at least 10 characters)', pw), h('label', {}, 'Password again', pw2),
    msg, h('button', { type: 'submit' }, 'Set up'));
  form.addEventListener('submit', act(null, async () => {
    msg.textContent = '';
    if (pw.value !== pw2.value) { msg.textContent = 'The two passwords differ.'; return; }
    const r = await api('POST', '/setup', { user: user.value, password: pw.value });
    await api('POST', '/login', { user: user.value, password: pw.value }).then(loggedIn);
    const done = h('button', { id: 'recovery-done', disabled: !!r.recoveryKey }, 'Continue to the dashboard');
    const tick = h('input', { type: 'checkbox', id: 'recovery-stored', onchange: () => { done.disabled = !tick.checked; } });
    page.replaceChildren(h('div', { class: 'card center' },
      h('h1', {}, 'Keep the recovery key'),
      r.recoveryKey
        ? [h('p', {}, 'The repository on this appliance is encrypted. If this box and its configuration are lost, this key, with the offsite copy, brings the data back. It is shown only now: write it down or print it, and keep it away from this box.'),
          h('p', { class: 'recovery', id: 'recovery-key' }, r.recoveryKey),
          h('label', { class: 'inline' }, tick, 'I have stored the recovery key somewhere safe')]
        : h('p', {}, 'The repository\'s recovery key was shown when the repository was set up.'),
      done));
    done.addEventListener('click', () => go('#/'));
  }));
  put(page, h('div', { class: 'center' }, form));
}

function loggedIn(r) {
  session.user = r.user; session.role = r.role; session.csrf = r.csrf;
  $('#who').textContent = `${r.user} (${r.role})`;
  connectEvents();
}

async function loginPage(page) {
  const st = await api('GET', '/status');
  if (st.setupNeeded) return go('#/setup');
  const user = h('input', { name: 'user', autocomplete: 'username', required: true, autofocus: true });
  const pw = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const msg = h('p', { class: 'error', id: 'login-error' });
  const form = h('form', { class: 'card stack', id: 'login-form' },
    h('h1', {}, 'Log in'), h('p', { class: 'muted' }, `Holdfast on ${st.hostname}`),
    h('label', {}, 'User name', user), h('label', {}, 'Password', pw), msg, h('button', { type: 'submit' }, 'Log in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    try {
      loggedIn(await api('POST', '/login', { user: user.value, password: pw.value }));
      go('#/');
    } catch (err) {
      msg.textContent = err.code === 'HF_ACCOUNT_LOCKED' ? err.message : 'Wrong user name or password.';
    }
  });
  put(page, h('div', { class: 'center' }, form));
}

// ---------- dashboard ----------
function chart(history) {
  const W = 600; const H = 160; const pad = 28;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  if (history.length < 2) {
    const t = document.createElementNS(svg.namespaceURI, 'text');
    t.setAttribute('x', String(pad)); t.setAttribute('y', String(H / 2));
    t.textContent = 'The chart fills in as backups run.';
    svg.append(t);
    return svg;
  }
  const t0 = history[0].at; const t1 = history[history.length - 1].at || t0 + 1;
  const max = Math.max(1, ...history.map((p) => Math.max(p.repoBytes, p.logicalBytes)));
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (W - 2 * pad);
  const y = (v) => H - pad - (v / max) * (H - 2 * pad);
  for (const [key, cls] of [['repoBytes', 'repo'], ['logicalBytes', 'logical']]) {
    const p = document.createElementNS(svg.namespaceURI, 'polyline');
    p.setAttribute('class', cls);
    p.setAttribute('points', history.map((pt) => `${x(pt.at).toFixed(1)},${y(pt[key]).toFixed(1)}`).join(' '));
    svg.append(p);
  }
  for (const [v, label] of [[max, bytes(max)], [0, '0']]) {
    const t = document.createElementNS(svg.namespaceURI, 'text');
    t.setAttribute('x', '2'); t.setAttribute('y', String(y(v) + 4));
    t.textContent = label;
    svg.append(t);
  }
  svg.setAttribute('aria-label', `storage from ${new Date(t0).toLocaleDateString()} to ${new Date(t1).toLocaleDateString()}`);
  return svg;
}

async function dashboardPage(page) {
  const d = await api('GET', '/dashboard');
  const running = h('div', { id: 'running' });
  const showRunning = () => {
    const list = [...jobs.values()].filter((j) => j.state === 'running' || j.state === 'queued');
    running.replaceChildren(...(list.length ? list.map(jobLine) : [h('p', { class: 'muted' }, 'Nothing is running.')]));
  };
  for (const j of d.running) jobs.set(j.id, j);
  cleanups.push(onJobs((j) => {
    showRunning();
    if (j && ['done', 'failed'].includes(j.state)) api('GET', '/dashboard').then((x) => { if (page.isConnected) refreshSources(x); }).catch(() => {});
  }));
  const sourcesBody = h('tbody', {});
  const refreshSources = (x) => {
    sourcesBody.replaceChildren(...(x.sources.length ? x.sources.map((s) => h('tr', {},
      h('td', {}, h('strong', {}, s.name), h('div', { class: 'muted' }, `${s.kind} · ${s.host}`)),
      h('td', {}, s.lastJob ? badge(s.lastJob.state) : h('span', { class: 'muted' }, 'never run'), s.lastJob && s.lastJob.finished ? h('div', { class: 'muted' }, when(s.lastJob.finished)) : null),
      h('td', { class: 'hide-small' }, s.lastSnapshot ? `${bytes(s.lastSnapshot.bytes)}, ${s.lastSnapshot.files} files` : '–'),
      h('td', {}, can('run') ? h('button', { class: 'secondary', dataset: { backup: s.name }, onclick: (ev) => act(ev.currentTarget, async () => { await api('POST', '/jobs', { kind: 'backup', subject: s.name }); toast(`Backup of ${s.name} started`); })() }, 'Back up now') : null)))
      : [h('tr', {}, h('td', { colspan: 4 }, h('span', { class: 'muted' }, 'No sources yet. '), h('a', { href: '#/sources' }, 'Add one')))]));
  };
  refreshSources(d);
  showRunning();
  const st = d.storage;
  put(page, 
    h('h1', {}, 'Dashboard'),
    d.warnings.length ? h('div', { class: 'card wide', id: 'warnings' }, h('h2', {}, 'Needs attention'),
      h('ul', { class: 'warnings' }, d.warnings.map((w) => h('li', { class: w.severity }, h('strong', {}, w.message), h('div', { class: 'muted' }, w.action))))) : null,
    h('div', { class: 'grid gap' },
      h('div', { class: 'card wide' }, h('h2', {}, 'Sources'), h('div', { class: 'table-wrap' }, h('table', { id: 'sources-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Source'), h('th', {}, 'Last backup'), h('th', { class: 'hide-small' }, 'Last snapshot'), h('th', {}, ''))), sourcesBody))),
      h('div', { class: 'card' }, h('h2', {}, 'Running now'), running),
      h('div', { class: 'card', id: 'storage' }, h('h2', {}, 'Storage'),
        h('div', { class: 'row spread' },
          h('div', {}, h('div', { class: 'big' }, bytes(st.repoBytes)), h('div', { class: 'muted' }, 'on disk')),
          h('div', {}, h('div', { class: 'big' }, st.dedupRatio ? `${st.dedupRatio}×` : '–'), h('div', { class: 'muted' }, 'deduplication and compression')),
          h('div', {}, h('div', { class: 'big' }, String(st.snapshots)), h('div', { class: 'muted' }, 'snapshots'))),
        chart(st.history), h('div', { class: 'legend' }, h('span', { class: 'repo' }, 'stored'), h('span', { class: 'logical' }, 'backed-up data'))),
      h('div', { class: 'card', id: 'replication-lag' }, h('h2', {}, 'Offsite copies'),
        d.targets.length ? h('table', {}, h('tbody', {}, d.targets.map((t) => h('tr', {},
          h('td', {}, h('strong', {}, t.name)), h('td', {}, t.lagSeconds ? `${duration(t.lagSeconds)} behind` : h('span', { class: 'ok' }, 'up to date')),
          h('td', { class: 'muted' }, t.lastSuccess ? `last copy ${when(t.lastSuccess)}` : 'never copied')))))
          : h('p', { class: 'muted' }, 'No replication target yet: the data has no offsite copy.'))));
}

// ---------- sources ----------
function sourceForm(existing, onSaved) {
  const kind = h('select', { name: 'kind' }, h('option', { value: 'local' }, 'Local folder on the appliance'), h('option', { value: 'smb' }, 'Windows / NAS share (SMB)'), h('option', { value: 'sftp' }, 'Unix / macOS server (SFTP)'));
  const f = {
    name: h('input', { name: 'name', required: true, pattern: '[a-z0-9][a-z0-9\\-]*', placeholder: 'e.g. finance' }),
    paths: h('textarea', { name: 'paths', placeholder: '/srv/data\n/etc' }),
    host: h('input', { name: 'host', placeholder: 'fileserver.example.local' }), port: h('input', { name: 'port', type: 'number', min: 1, max: 65535 }),
    domain: h('input', { name: 'domain', placeholder: 'CORP (optional)' }), user: h('input', { name: 'user', placeholder: 'backup' }),
    share: h('input', { name: 'share', placeholder: 'Finance' }), path: h('input', { name: 'path', placeholder: '/' }),
    password: h('input', { name: 'password', type: 'password', autocomplete: 'new-password', placeholder: existing ? '(unchanged)' : '' }),
    identityKey: h('textarea', { name: 'identityKey', placeholder: '-----BEGIN OPENSSH PRIVATE KEY-----' }),
    hostKey: h('input', { name: 'hostKey', placeholder: 'SHA256:… (filled in by Test connection)' }),
    schedule: h('select', { name: 'schedule' }, h('option', { value: '' }, 'No schedule (add one later)'), h('option', { value: '0 * * * *' }, 'Every hour'), h('option', { value: '30 1 * * *' }, 'Every night at 01:30'), h('option', { value: '0 */4 * * *' }, 'Every 4 hours')),
  };
  if (existing) {
    f.name.value = existing.name; f.name.disabled = true;
    const sp = existing.spec;
    kind.value = sp.kind; kind.disabled = true;
    if (sp.kind === 'local') f.paths.value = sp.paths.join('\n');
    else { f.host.value = sp.host; f.port.value = sp.port; f.user.value = sp.user; f.path.value = sp.paths[0]; if (sp.kind === 'smb') { f.domain.value = sp.domain; f.share.value = sp.share; } }
    if (existing.secrets && existing.secrets.hostKey) f.hostKey.value = existing.secrets.hostKey;
  }
  const groups = {
    local: h('div', {}, h('label', {}, 'Folders to back up (one per line)', f.paths)),
    smb: h('div', {}, h('label', {}, 'Server', f.host), h('label', {}, 'Port (default 445)', f.port), h('label', {}, 'Domain', f.domain), h('label', {}, 'User', f.user), h('label', {}, 'Share', f.share), h('label', {}, 'Folder in the share', f.path), h('label', {}, 'Password', f.password)),
    sftp: h('div', {}, h('label', {}, 'Server', f.host), h('label', {}, 'Port (default 22)', f.port), h('label', {}, 'User', f.user), h('label', {}, 'Folder', f.path), h('label', {}, 'Private key', f.identityKey), h('label', {}, 'Host key fingerprint', f.hostKey)),
  };
  const showKind = () => { for (const [k, g] of Object.entries(groups)) g.hidden = k !== kind.value; };
  kind.addEventListener('change', showKind);
  showKind();
  const result = h('div', { id: 'test-result' });
  const body = () => {
    const b = { name: f.name.value.trim() };
    if (kind.value === 'local') Object.assign(b, { kind: 'local', paths: f.paths.value.split('\n').map((s) => s.trim()).filter(Boolean) });
    else {
      const enc = (s) => encodeURIComponent(s);
      const port = f.port.value ? `:${f.port.value}` : '';
      const folder = (f.path.value || '/').split('/').filter(Boolean).map(enc).join('/');
      const who = kind.value === 'smb' && f.domain.value ? `${enc(f.domain.value)};${enc(f.user.value)}` : enc(f.user.value);
      b.url = kind.value === 'smb' ? `smb://${who}@${f.host.value}${port}/${enc(f.share.value)}${folder ? `/${folder}` : ''}` : `sftp://${who}@${f.host.value}${port}/${folder}`;
      if (f.password.value) b.password = f.password.value;
      if (f.identityKey.value.trim()) b.identityKey = f.identityKey.value.trim() + '\n';
      if (f.hostKey.value.trim()) b.hostKey = f.hostKey.value.trim();
    }
    return b;
  };
  const test = h('button', { type: 'button', class: 'secondary', id: 'test-connection' }, 'Test connection');
  test.addEventListener('click', act(test, async () => {
    result.replaceChildren(h('p', { class: 'muted' }, 'Connecting…'));
    const r = await api('POST', '/sources/test', body());
    if (r.ok) {
      result.replaceChildren(h('div', { class: 'ok' }, `Connected to ${r.host}.`), ...r.paths.map((p) => h('div', { class: 'muted' }, `${p.path}: ${p.entries ?? '?'} entries${p.sample.length ? ` (${p.sample.join(', ')}${p.entries > p.sample.length ? ', …' : ''})` : ''}`)));
    } else if (r.error.code === 'HF_SOURCE_HOST_KEY_UNKNOWN' && r.error.details) {
      const fp = r.error.details.fingerprint;
      const trust = h('button', { type: 'button', class: 'secondary', onclick: () => { f.hostKey.value = fp; result.replaceChildren(h('p', {}, 'Key pinned; test again to connect.')); } }, 'Trust this key');
      result.replaceChildren(h('p', {}, `The server presents a ${r.error.details.keyType} host key:`), h('p', { class: 'mono', id: 'host-key-fingerprint' }, fp),
        h('p', { class: 'muted' }, 'Compare it with the fingerprint on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) before you trust it.'), trust);
    } else {
      result.replaceChildren(h('p', { class: 'error' }, `${r.error.code}: ${r.error.message}`));
    }
  }));
  const save = h('button', { type: 'submit' }, existing ? 'Save changes' : 'Add source');
  const form = h('form', { class: 'stack', id: 'source-form' },
    h('label', {}, 'Name', f.name), h('label', {}, 'Kind', kind), groups.local, groups.smb, groups.sftp,
    existing ? null : h('label', {}, 'Schedule', f.schedule),
    h('div', { class: 'row' }, test, save), result);
  form.addEventListener('submit', act(save, async () => {
    const b = body();
    if (existing) await api('PUT', `/sources/${encodeURIComponent(existing.name)}`, b);
    else await api('POST', '/sources', { ...b, ...(f.schedule.value ? { schedule: f.schedule.value } : {}) });
    toast(existing ? 'Source saved' : `Source ${b.name} added`);
    onSaved();
  }));
  return form;
}

async function sourcesPage(page) {
  const { sources } = await api('GET', '/sources');
  const formBox = h('div', { class: 'card', hidden: true });
  const openForm = (existing) => { formBox.hidden = false; formBox.replaceChildren(h('h2', {}, existing ? `Edit ${existing.name}` : 'Add a source'), sourceForm(existing, render)); formBox.scrollIntoView(); };
  put(page, h('div', { class: 'row spread' }, h('h1', {}, 'Sources'), can('configure') ? h('button', { id: 'add-source', onclick: () => openForm(null) }, 'Add source') : null),
    h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Kind'), h('th', {}, 'What'), h('th', {}, ''))),
      h('tbody', {}, sources.length ? sources.map((s) => h('tr', {},
        h('td', {}, h('strong', {}, s.name)), h('td', {}, s.spec.kind),
        h('td', { class: 'mono' }, s.spec.kind === 'local' ? s.spec.paths.join(', ') : `${s.spec.user}@${s.spec.host}${s.spec.kind === 'smb' ? `/${s.spec.share}` : ''}${s.spec.paths[0]}`),
        h('td', { class: 'row' },
          can('run') ? h('button', { class: 'secondary', dataset: { backup: s.name }, onclick: (ev) => act(ev.currentTarget, async () => { await api('POST', '/jobs', { kind: 'backup', subject: s.name }); go('#/jobs'); })() }, 'Back up now') : null,
          can('configure') ? h('button', { class: 'secondary', onclick: () => openForm(s) }, 'Edit') : null,
          can('configure') ? h('button', { class: 'danger', onclick: (ev) => act(ev.currentTarget, async () => { if (!confirm(`Remove ${s.name}? Its snapshots stay.`)) return; await api('DELETE', `/sources/${encodeURIComponent(s.name)}`); render(); })() }, 'Remove') : null)))
        : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No sources yet.')))))),
    formBox);
}

// ---------- schedules and retention ----------
async function schedulesPage(page) {
  const [{ schedules }, { sources }, { policy, protected: prot }] = await Promise.all([api('GET', '/schedules'), api('GET', '/sources'), api('GET', '/retention')]);
  const job = h('select', { name: 'job' }, ['backup', 'replicate', 'verify', 'prune'].map((k) => h('option', { value: k }, k)));
  const subject = h('select', { name: 'subject' });
  const fillSubjects = () => {
    subject.replaceChildren(...(job.value === 'backup' ? sources.map((s) => h('option', { value: s.name }, s.name)) : [h('option', { value: '' }, job.value === 'replicate' ? 'all targets' : '–')]));
  };
  job.addEventListener('change', fillSubjects);
  fillSubjects();
  const cron = h('input', { name: 'cron', value: '0 * * * *', class: 'mono' });
  const preset = h('select', { onchange: () => { if (preset.value) cron.value = preset.value; } },
    h('option', { value: '' }, 'presets…'), h('option', { value: '0 * * * *' }, 'hourly'), h('option', { value: '30 1 * * *' }, 'daily 01:30'), h('option', { value: '0 3 * * 0' }, 'weekly, Sunday 03:00'), h('option', { value: '*/15 8-18 * * 1-5' }, 'every 15 min, office hours'));
  const add = h('form', { class: 'row', id: 'schedule-form' }, job, subject, cron, preset, h('button', { type: 'submit' }, 'Add schedule'));
  add.addEventListener('submit', act(null, async () => { await api('POST', '/schedules', { job: job.value, subject: subject.value || null, cron: cron.value }); render(); }));
  const fields = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'];
  const inputs = Object.fromEntries(fields.map((k) => [k, h('input', { type: 'number', min: 0, name: k, value: policy && policy[k] ? policy[k] : '', class: 'narrow' })]));
  const pol = () => Object.fromEntries(fields.filter((k) => inputs[k].value).map((k) => [k, Number(inputs[k].value)]));
  const preview = h('div', { id: 'retention-preview' });
  const previewBtn = h('button', { type: 'button', class: 'secondary', id: 'preview-retention' }, 'Preview');
  previewBtn.addEventListener('click', act(previewBtn, async () => {
    const r = await api('POST', '/retention/preview', { policy: pol() });
    preview.replaceChildren(h('p', {}, `Keeps ${r.keep}, forgets ${r.forget} of ${r.decisions.length} snapshots.`), h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Snapshot'), h('th', {}, 'Source'), h('th', {}, 'Time'), h('th', {}, ''), h('th', {}, 'Why'))),
      h('tbody', {}, r.decisions.map((d) => h('tr', {}, h('td', { class: 'mono' }, d.short), h('td', {}, d.source || d.host), h('td', {}, new Date(d.time).toLocaleString()),
        h('td', { class: d.keep ? 'keep' : 'forget' }, d.keep ? 'keep' : 'forget'), h('td', { class: 'muted' }, d.reasons.join(', ')))))))); }));
  const saveBtn = h('button', { type: 'submit' }, 'Save policy');
  const retention = h('form', { id: 'retention-form' }, h('div', { class: 'row' }, fields.map((k) => h('label', {}, `keep ${k}`, inputs[k]))), h('div', { class: 'row' }, previewBtn, can('configure') ? saveBtn : null), preview);
  retention.addEventListener('submit', act(saveBtn, async () => { await api('PUT', '/retention', { policy: pol() }); toast('Retention policy saved; the next prune applies it'); }));
  put(page, h('h1', {}, 'Schedules and retention'),
    h('div', { class: 'card' }, h('h2', {}, 'Schedules'), h('div', { class: 'table-wrap' }, h('table', { id: 'schedules-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', {}, 'For'), h('th', {}, 'When (cron)'), h('th', {}, 'Next run'), h('th', {}, ''))),
      h('tbody', {}, schedules.length ? schedules.map((s) => h('tr', {}, h('td', {}, s.job), h('td', {}, s.subject || '–'), h('td', { class: 'mono' }, s.cron),
        h('td', {}, s.enabled ? when(s.next) : 'disabled'),
        h('td', {}, can('configure') ? h('button', { class: 'danger', onclick: (ev) => act(ev.currentTarget, async () => { await api('DELETE', `/schedules/${s.id}`); render(); })() }, 'Remove') : null)))
        : h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No schedules: nothing runs by itself yet.'))))),
    can('configure') ? add : null),
    h('div', { class: 'card gap' }, h('h2', {}, 'Retention'),
      h('p', { class: 'muted' }, 'Per source: the newest "last" snapshots, and the newest of each of the last N hours, days, weeks, months and years, are kept. Protected snapshots are always kept. Everything else is forgotten at the next prune.'),
      retention, prot.length ? h('p', { class: 'muted' }, `${prot.length} snapshot(s) protected.`) : null));
}

// ---------- snapshots: list, browse, search, restore ----------
async function snapshotsPage(page) {
  const { snapshots } = await api('GET', '/snapshots');
  const sources = [...new Set(snapshots.map((s) => s.source || s.host))];
  const filter = h('select', { id: 'snapshot-filter' }, h('option', { value: '' }, 'all sources'), sources.map((s) => h('option', { value: s }, s)));
  const pattern = h('input', { name: 'pattern', placeholder: 'search every version: *.xlsx, report*', id: 'search-pattern' });
  const search = h('form', { class: 'row' }, pattern, h('button', { type: 'submit' }, 'Search'));
  search.addEventListener('submit', (ev) => { ev.preventDefault(); go(`#/search?pattern=${encodeURIComponent(pattern.value)}`); });
  const tbody = h('tbody', {});
  const fill = () => {
    const list = snapshots.filter((s) => !filter.value || (s.source || s.host) === filter.value).slice().reverse();
    tbody.replaceChildren(...(list.length ? list.map((s) => h('tr', {},
      h('td', {}, h('a', { href: `#/snapshots/${s.id}`, class: 'mono' }, s.short)), h('td', {}, new Date(s.time).toLocaleString()),
      h('td', {}, s.source || s.host), h('td', { class: 'num hide-small' }, String(s.stats.files)), h('td', { class: 'num' }, bytes(s.stats.bytes)),
      h('td', { class: 'num hide-small' }, bytes(s.stats.bytesAdded)),
      h('td', {}, can('configure') ? h('label', { class: 'inline' }, h('input', { type: 'checkbox', checked: s.protected, onchange: (ev) => act(null, async () => { await api('PUT', `/snapshots/${s.id}/protected`, { protected: ev.target.checked }); toast(ev.target.checked ? 'Protected from retention' : 'No longer protected'); })() }), 'protected') : (s.protected ? 'protected' : ''))))
      : [h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No snapshots yet.'))]));
  };
  filter.addEventListener('change', fill);
  fill();
  put(page, h('h1', {}, 'Snapshots'), h('div', { class: 'card' }, h('div', { class: 'row spread' }, filter, search)),
    h('div', { class: 'card gap' }, h('div', { class: 'table-wrap' }, h('table', { id: 'snapshots-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Snapshot'), h('th', {}, 'Time'), h('th', {}, 'Source'), h('th', { class: 'num hide-small' }, 'Files'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'num hide-small' }, 'Added'), h('th', {}, ''))), tbody))));
}

function restoreDialog(snap, paths, label) {
  const snapshot = snap.id;
  const target = h('input', { name: 'target', placeholder: '(default: a new folder in the appliance\'s restore area)', id: 'restore-target' });
  const original = h('input', { type: 'checkbox', id: 'restore-original' });
  // Only a local source's files can go back in place: a server's paths are on that server.
  const inPlace = snap.origin === 'local'
    ? h('label', { class: 'inline' }, original, 'back to where it came from (overwrites files there)')
    : h('p', { class: 'muted' }, `These files came from a server (${snap.origin}): they are restored on the appliance, to copy back from there.`);
  const status = h('div', {});
  const go2 = h('button', { type: 'submit', id: 'restore-start' }, 'Restore');
  const dlg = h('dialog', {}, h('form', { method: 'dialog' },
    h('h2', {}, `Restore ${label}`),
    h('label', {}, 'Restore into (a path on the appliance)', target),
    inPlace,
    h('div', { class: 'row' }, go2, h('button', { type: 'button', class: 'secondary', onclick: () => dlg.close() }, 'Close')), status));
  dlg.querySelector('form').addEventListener('submit', act(go2, async () => {
    const r = await api('POST', '/restores', { snapshot, paths, target: original.checked ? 'original' : target.value.trim() || null });
    status.replaceChildren(h('p', {}, `Restoring to ${r.job.params.target}`), liveJob(r.job, (j) => { if (j.state === 'done') toast('Restore finished'); }));
    go2.disabled = true;
  }));
  document.body.append(dlg);
  dlg.addEventListener('close', () => dlg.remove());
  dlg.showModal();
}

async function versionsDialog(p) {
  const r = await api('GET', `/versions?path=${encodeURIComponent(p)}`);
  const dlg = h('dialog', { id: 'versions' }, h('h2', {}, `Every version of ${p}`), h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, 'Snapshot'), h('th', {}, 'Time'), h('th', { class: 'num' }, 'Size'), h('th', {}, 'Modified'), h('th', {}, ''))),
    h('tbody', {}, r.versions.map((v, i) => {
      const changed = i === 0 || v.entry.content !== r.versions[i - 1].entry.content;
      return h('tr', {}, h('td', { class: 'mono' }, v.snapshot.slice(0, 8)), h('td', {}, new Date(v.time).toLocaleString()), h('td', { class: 'num' }, bytes(v.entry.size)),
        h('td', {}, `${new Date(v.entry.mtime[0] * 1000).toLocaleString()}${changed ? '' : ' (same content)'}`),
        h('td', {}, can('restore') && v.entry.type === 'file' ? h('a', { class: 'button secondary', href: `/api/v1/snapshots/${v.snapshot}/file?path=${encodeURIComponent(p)}` }, 'Download') : null));
    })))), h('button', { class: 'secondary', onclick: () => dlg.close() }, 'Close'));
  document.body.append(dlg);
  dlg.addEventListener('close', () => dlg.remove());
  dlg.showModal();
}

async function browsePage(page, id) {
  const p = params().get('path') || '/';
  const [{ snapshots }, first] = await Promise.all([api('GET', '/snapshots'), api('GET', `/snapshots/${id}/entries?path=${encodeURIComponent(p)}&limit=200`)]);
  const snap = snapshots.find((s) => s.id.startsWith(id));
  const crumbs = h('div', { class: 'crumbs' }, h('a', { href: `#/snapshots/${id}?path=/` }, '/'));
  let acc = '';
  for (const part of first.path.split('/').filter(Boolean)) {
    acc += `/${part}`;
    crumbs.append(h('span', { class: 'muted' }, '›'), h('a', { href: `#/snapshots/${id}?path=${encodeURIComponent(acc)}` }, part));
  }
  const tbody = h('tbody', {});
  const addRows = (entries) => {
    for (const e of entries) {
      const actions = h('td', { class: 'row' });
      if (e.type === 'dir') {
        if (can('restore')) actions.append(h('a', { class: 'button secondary', href: `/api/v1/snapshots/${id}/zip?path=${encodeURIComponent(e.path)}`, dataset: { zip: e.path } }, 'Download zip'));
      } else if (e.type === 'file') {
        if (can('restore')) actions.append(h('a', { class: 'button secondary', href: `/api/v1/snapshots/${id}/file?path=${encodeURIComponent(e.path)}`, dataset: { download: e.path } }, 'Download'));
        actions.append(h('button', { class: 'secondary', onclick: act(null, () => versionsDialog(e.path)) }, 'Versions'));
      }
      if (can('restore') && (e.type === 'dir' || e.type === 'file')) actions.append(h('button', { class: 'secondary', dataset: { restore: e.path }, onclick: () => restoreDialog(snap, [e.path], e.name) }, 'Restore…'));
      tbody.append(h('tr', {},
        h('td', {}, e.type === 'dir' ? h('a', { href: `#/snapshots/${id}?path=${encodeURIComponent(e.path)}`, class: 'dir' }, `${e.name}/`) : h('span', { class: e.type }, e.type === 'symlink' ? `${e.name} →` : e.name)),
        h('td', { class: 'num' }, e.type === 'file' ? bytes(e.size) : ''), h('td', { class: 'hide-small' }, new Date(e.mtime[0] * 1000).toLocaleString()), actions));
    }
  };
  addRows(first.entries);
  let next = first.next;
  const more = h('button', { class: 'secondary', id: 'load-more', hidden: !next }, 'Load more');
  more.addEventListener('click', act(more, async () => {
    const r = await api('GET', `/snapshots/${id}/entries?path=${encodeURIComponent(p)}&limit=500&after=${encodeURIComponent(next)}`);
    addRows(r.entries);
    next = r.next;
    more.hidden = !next;
  }));
  const others = snapshots.filter((s) => s.id !== snap.id && (s.source || s.host) === (snap.source || snap.host));
  const compareWith = h('select', { id: 'compare-with' }, h('option', { value: '' }, 'compare with…'), others.map((s) => h('option', { value: s.id }, `${s.short} · ${new Date(s.time).toLocaleString()}`)));
  const diffBox = h('div', { id: 'diff' });
  compareWith.addEventListener('change', act(null, async () => {
    diffBox.parentElement.hidden = !compareWith.value;
    if (!compareWith.value) { diffBox.replaceChildren(); return; }
    const d = await api('GET', `/diff?a=${compareWith.value}&b=${snap.id}&path=${encodeURIComponent(first.path)}`);
    const line = (cls, sign, e) => h('div', { class: cls }, `${sign} ${e.name}${e.type === 'dir' ? '/' : ''} ${e.type === 'file' ? `(${bytes(e.size)})` : ''}`);
    diffBox.replaceChildren(h('h2', {}, 'Changes in this folder'),
      d.added.length + d.removed.length + d.changed.length === 0 ? h('p', { class: 'muted' }, 'No changes here.') : null,
      d.added.map((e) => line('ok', '+', e)), d.removed.map((e) => line('error', '−', e)), d.changed.map((c) => line('', '~', c.after)));
  }));
  put(page, h('h1', {}, `Snapshot ${snap.short}`), h('p', { class: 'muted' }, `${snap.source || snap.host} · ${new Date(snap.time).toLocaleString()} · ${snap.stats.files} files, ${bytes(snap.stats.bytes)}`),
    h('div', { class: 'card' }, h('div', { class: 'row spread' }, crumbs, h('div', { class: 'row' }, compareWith,
      can('restore') && first.path !== '/' ? h('button', { class: 'secondary', onclick: () => restoreDialog(snap, [first.path], first.path) }, 'Restore this folder…') : null)),
      h('div', { class: 'table-wrap' }, h('table', { id: 'entries' }, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'hide-small' }, 'Modified'), h('th', {}, ''))), tbody)), more),
    h('div', { class: 'card gap', id: 'diff-card', hidden: true }, diffBox));
}

async function searchPage(page) {
  const pattern = params().get('pattern') || '';
  const input = h('input', { value: pattern, id: 'search-pattern' });
  const form = h('form', { class: 'row' }, input, h('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); go(`#/search?pattern=${encodeURIComponent(input.value)}`); });
  put(page, h('h1', {}, 'Search'), h('div', { class: 'card' }, form));
  if (!pattern) return;
  const glob = /[*?[]/.test(pattern) ? pattern : `*${pattern}*`;
  const { matches } = await api('GET', `/find?pattern=${encodeURIComponent(glob)}&limit=500`);
  put(page, h('div', { class: 'card gap' }, h('p', { class: 'muted' }, `${matches.length} match(es) for ${glob}`), h('div', { class: 'table-wrap' }, h('table', { id: 'search-results' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Path'), h('th', {}, 'Snapshot'), h('th', { class: 'num' }, 'Size'), h('th', {}, ''))),
    h('tbody', {}, matches.map((m) => h('tr', {}, h('td', { class: 'mono' }, m.path), h('td', {}, h('a', { href: `#/snapshots/${m.snapshot}?path=${encodeURIComponent(m.path.split('/').slice(0, -1).join('/') || '/')}` }, new Date(m.time).toLocaleString())),
      h('td', { class: 'num' }, m.type === 'file' ? bytes(m.size) : ''),
      h('td', {}, m.type === 'file' && can('restore') ? h('a', { class: 'button secondary', href: `/api/v1/snapshots/${m.snapshot}/file?path=${encodeURIComponent(m.path)}` }, 'Download') : null))))))));
}

// ---------- jobs ----------
async function jobsPage(page) {
  const { jobs: list, running } = await api('GET', '/jobs?limit=50');
  for (const j of running) jobs.set(j.id, j);
  const rows = h('div', { id: 'jobs-list' });
  const byId = new Map(list.map((j) => [j.id, jobs.get(j.id) && jobs.get(j.id).state === 'running' ? jobs.get(j.id) : j]));
  const draw = () => rows.replaceChildren(...[...byId.values()].sort((a, b) => b.id - a.id).map((j) => {
    const line = jobLine(j);
    if ((j.state === 'running' || j.state === 'queued') && can('run')) line.append(h('button', { class: 'secondary', onclick: (ev) => act(ev.currentTarget, () => api('POST', `/jobs/${j.id}/cancel`))() }, 'Cancel'));
    line.append(h('div', { class: 'muted' }, `job ${j.id} · asked by ${j.requestedBy} · ${when(j.created)}`));
    return line;
  }));
  cleanups.push(onJobs((j) => { if (j) { byId.set(j.id, j); draw(); } }));
  draw();
  put(page, h('h1', {}, 'Jobs'), h('div', { class: 'card' }, list.length ? rows : h('p', { class: 'muted' }, 'No jobs yet.')));
}

// ---------- replication ----------
async function replicationPage(page) {
  const { targets } = await api('GET', '/targets');
  const cards = targets.map((t) => {
    const s = t.status;
    const probe = h('div', {});
    return h('div', { class: 'card', dataset: { target: t.name } },
      h('div', { class: 'row spread' }, h('h2', {}, t.name), s.lastError && (!s.lastSuccess || s.lastError.at > s.lastSuccess) ? badge('failed') : s.lagSeconds ? badge('queued') : badge('ok')),
      h('table', {}, h('tbody', {},
        h('tr', {}, h('th', {}, 'Endpoints'), h('td', { class: 'mono' }, t.endpoints.join(', '))),
        h('tr', {}, h('th', {}, 'Bandwidth'), h('td', {}, t.rate || 'unlimited', t.windows.length ? h('div', { class: 'muted' }, t.windows.join('; ')) : null)),
        h('tr', {}, h('th', {}, 'Last copy'), h('td', {}, s.lastSuccess ? when(s.lastSuccess) : 'never')),
        h('tr', {}, h('th', {}, 'Lag'), h('td', { class: 'lag' }, s.lagSeconds ? `${duration(s.lagSeconds)} (${s.snapshotsPending} snapshot(s), ${bytes(s.pendingBytes)} pending)` : 'up to date')),
        s.lastError ? h('tr', {}, h('th', {}, 'Last error'), h('td', { class: 'error' }, `${s.lastError.code}: ${s.lastError.message} (${when(s.lastError.at)})`)) : null)),
      h('div', { class: 'row' },
        can('run') ? h('button', { class: 'secondary', onclick: (ev) => act(ev.currentTarget, async () => { await api('POST', '/jobs', { kind: 'replicate', subject: t.name }); go('#/jobs'); })() }, 'Replicate now') : null,
        h('button', { class: 'secondary', onclick: (ev) => act(ev.currentTarget, async () => {
          const r = await api('POST', `/targets/${t.name}/probe`);
          probe.replaceChildren(...r.status.endpoints.map((e) => h('div', { class: e.reachable ? 'ok' : 'error' }, `${e.endpoint}: ${e.reachable ? `reachable, ${e.rttMs} ms` : e.error}`)));
        })() }, 'Test endpoints')),
      probe);
  });
  const f = { name: h('input', { name: 'name' }), endpoints: h('input', { name: 'endpoints', placeholder: 'store1.example.net:7443,store2.example.net:7443' }),
    rate: h('input', { name: 'rate', placeholder: 'e.g. 20MiB/s (empty: unlimited)' }), windows: h('input', { name: 'windows', placeholder: 'e.g. Mon-Fri 08:00-18:00=2MiB/s' }),
    ca: h('textarea', { name: 'ca' }), cert: h('textarea', { name: 'cert' }), key: h('textarea', { name: 'key' }) };
  const addForm = h('form', { class: 'stack', id: 'target-form' }, h('h2', {}, 'Add a target'),
    h('label', {}, 'Name', f.name), h('label', {}, 'Endpoints', f.endpoints), h('label', {}, 'Rate', f.rate), h('label', {}, 'Time window', f.windows),
    h('label', {}, 'Store CA certificate (PEM)', f.ca), h('label', {}, 'This appliance\'s certificate (PEM)', f.cert), h('label', {}, 'Its key (PEM)', f.key),
    h('button', { type: 'submit' }, 'Add target'));
  addForm.addEventListener('submit', act(null, async () => {
    await api('POST', '/targets', { name: f.name.value, endpoints: f.endpoints.value, rate: f.rate.value || null, windows: f.windows.value ? [f.windows.value] : [], ca: f.ca.value, cert: f.cert.value, key: f.key.value });
    render();
  }));
  put(page, h('h1', {}, 'Replication'), targets.length ? h('div', { class: 'grid' }, cards) : h('div', { class: 'card' }, h('p', { class: 'muted' }, 'No offsite target yet.')),
    can('configure') ? h('div', { class: 'card gap' }, addForm) : null);
}

// ---------- settings ----------
async function settingsPage(page) {
  const oldPw = h('input', { type: 'password', autocomplete: 'current-password' });
  const newPw = h('input', { type: 'password', autocomplete: 'new-password' });
  const mine = h('form', { class: 'stack' }, h('h2', {}, 'My password'), h('label', {}, 'Current password', oldPw), h('label', {}, 'New password', newPw), h('button', { type: 'submit' }, 'Change password'));
  mine.addEventListener('submit', act(null, async () => { await api('PUT', '/me/password', { old: oldPw.value, password: newPw.value }); toast('Password changed: log in again'); session.user = null; go('#/login'); }));
  put(page, h('h1', {}, 'Settings'), h('div', { class: 'card' }, mine));
  if (!can('configure')) return;
  const [{ users }, { entries }] = await Promise.all([api('GET', '/users'), api('GET', '/audit?limit=100')]);
  const nu = { user: h('input', { name: 'user' }), password: h('input', { type: 'password', name: 'password', autocomplete: 'new-password' }), role: h('select', { name: 'role' }, ['viewer', 'operator', 'admin'].map((r) => h('option', { value: r }, r))) };
  const addUser = h('form', { class: 'row', id: 'user-form' }, nu.user, nu.password, nu.role, h('button', { type: 'submit' }, 'Add user'));
  addUser.addEventListener('submit', act(null, async () => { await api('POST', '/users', { user: nu.user.value, password: nu.password.value, role: nu.role.value }); render(); }));
  put(page, 
    h('div', { class: 'card gap' }, h('h2', {}, 'Users'), h('div', { class: 'table-wrap' }, h('table', {}, h('tbody', {}, users.map((u) => h('tr', {},
      h('td', {}, h('strong', {}, u.name)), h('td', {}, u.role), h('td', { class: 'muted' }, u.lockedUntil ? `locked until ${new Date(u.lockedUntil).toLocaleTimeString()}` : ''),
      h('td', {}, u.name !== session.user ? h('button', { class: 'danger', onclick: (ev) => act(ev.currentTarget, async () => { if (!confirm(`Remove ${u.name}?`)) return; await api('DELETE', `/users/${u.name}`); render(); })() }, 'Remove') : null)))))), addUser),
    h('div', { class: 'card gap' }, h('h2', {}, 'Audit log'), h('div', { class: 'table-wrap' }, h('table', { id: 'audit' }, h('tbody', {}, entries.map((e) => h('tr', {},
      h('td', {}, new Date(e.at).toLocaleString()), h('td', {}, e.user), h('td', {}, e.action), h('td', { class: 'mono' }, JSON.stringify(e.detail)))))))));
}

// ---------- start ----------
window.addEventListener('hashchange', render);
document.addEventListener('DOMContentLoaded', async () => {
  $('#menu').addEventListener('click', () => { const n = $('#nav'); n.classList.toggle('open'); $('#menu').setAttribute('aria-expanded', String(n.classList.contains('open'))); });
  $('#logout').addEventListener('click', act(null, async () => { await api('POST', '/logout').catch(() => {}); session.user = null; if (events) events.close(); go('#/login'); }));
  try { loggedIn(await api('GET', '/session')); } catch { /* not logged in */ }
  render();
});
