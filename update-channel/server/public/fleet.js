// The vendor's fleet page: lists boxes from /v1/fleet/boxes every 5 s and
// sends commands; the vendor token stays in this tab (sessionStorage).
const $ = (s) => document.querySelector(s);
let token = sessionStorage.getItem('fleet-token') || '';
let commandBox = null;

async function api(method, url, body) {
  const r = await fetch(url, {
    method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json();
  if (!r.ok) throw new Error(`${j.error?.code}: ${j.error?.message}`);
  return j;
}

const cell = (text, cls) => { const td = document.createElement('td'); td.textContent = text; if (cls) td.className = cls; return td; };
const ago = (s) => (s === null ? 'never' : s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`);
const bytes = (n) => (n >= 1e12 ? `${(n / 1e12).toFixed(1)} TB` : n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${(n / 1e6).toFixed(1)} MB`);

async function refresh() {
  const { boxes } = await api('GET', '/v1/fleet/boxes');
  const body = $('#boxes tbody');
  body.replaceChildren();
  let healthy = 0;
  for (const b of boxes) {
    const tr = document.createElement('tr');
    tr.dataset.box = b.name;
    const silent = b.silentSeconds === null || b.silentSeconds > 900;
    const health = b.revoked ? 'revoked' : b.health?.status ?? 'unknown';
    if (health === 'ok' && !silent) healthy++;
    tr.append(cell(b.name), cell(b.hostname), cell(b.version ?? '—'), cell(b.channel), cell(ago(b.silentSeconds), silent ? 'silent' : ''),
      cell(health + (b.health?.warnings?.length ? `: ${b.health.warnings.join('; ')}` : ''), health),
      cell(b.sources.map((s) => `${s.name}: ${s.lastBackup ?? 'never'}`).join('\n') || '—'),
      cell(b.targets.map((t) => `${t.name}: ${t.lagSeconds === null ? 'never' : ago(Math.round(t.lagSeconds))}`).join('\n') || '—'),
      cell(b.storage ? `${bytes(b.storage.repositoryBytes)}, ${b.storage.snapshots} snapshots` : '—'));
    const td = document.createElement('td');
    const btn = document.createElement('button');
    btn.textContent = 'Command…';
    btn.disabled = Boolean(b.revoked);
    btn.addEventListener('click', () => { commandBox = b.name; $('#command-box').textContent = b.name; $('#command-result').textContent = ''; $('#command').showModal(); });
    td.append(btn);
    tr.append(td);
    body.append(tr);
  }
  $('#summary').textContent = `${boxes.length} boxes, ${healthy} healthy and heard from`;
  const { releases } = await api('GET', '/v1/fleet/releases');
  const rb = $('#releases tbody');
  rb.replaceChildren();
  for (const r of releases) {
    const tr = document.createElement('tr');
    const failed = r.reports.filter((x) => x.outcome === 'failed').length;
    tr.append(cell(r.channel), cell(r.version), cell(`${r.percent}%`), cell(String(r.offered)), cell(`${r.reports.length - failed} installed, ${failed} failed`),
      cell(r.halted ? `halted: ${r.haltReason}` : 'rolling out', r.halted ? 'error' : 'ok'));
    rb.append(tr);
  }
}

async function show() {
  try {
    await refresh();
    $('#login').hidden = true;
    $('#main').hidden = false;
    setInterval(() => refresh().catch((e) => { $('#summary').textContent = e.message; }), 5000);
  } catch (e) {
    $('#login-error').textContent = e.message;
  }
}

$('#login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('#token').value.trim();
  sessionStorage.setItem('fleet-token', token);
  void show();
});
$('#command-send').addEventListener('click', async (ev) => {
  ev.preventDefault();
  try {
    const args = JSON.parse($('#command-args').value || '{}');
    const r = await api('POST', `/v1/fleet/boxes/${encodeURIComponent(commandBox)}/commands`, { kind: $('#command-kind').value, args });
    $('#command-result').textContent = `queued as command ${r.id}: the box gets it with its next heartbeat`;
  } catch (e) {
    $('#command-result').textContent = e.message;
  }
});
if (token) void show();
