// Live connections: every decided connection as it happens, in a virtualized list.
import { useEffect, useLayoutEffect, useState, useRef, useMemo } from 'preact/hooks';
import { html, esc, field, progName, base, dest, timeOf, verdictClass, reasonText, containerText } from './util.js';

export const ROW = 28; // px per row

// view is a connection's text as shown, escaped once and kept with it: the list
// regroups thousands of rows on every update.
function view(c) {
  if (!c._view) {
    c._view = { exe: field(c, 'exe'), name: progName(c), dest: dest(c), host: c.host ? field(c, 'host') : esc(c.remote_ip), ctr: containerText(c) };
  }
  return c._view;
}
const OVERSCAN = 8;

// rowsOf filters the connections and, when grouped, orders them app → host with a
// header row per app and per host.
function rowsOf(conns, f, grouped) {
  const now = Date.now();
  const since = f.time ? now - Number(f.time) * 1000 : 0;
  const app = f.app.toLowerCase();
  const list = conns.filter((c) =>
    (!app || (c.exe || '').toLowerCase().includes(app) || (c.host || '').toLowerCase().includes(app)) &&
    (!f.verdict || (f.verdict === 'timeout' ? c.reason === 'timeout' : c.verdict === f.verdict)) &&
    (!f.dir || c.direction === f.dir) &&
    (!since || Date.parse(c.time) >= since));
  if (!grouped) return list.slice().reverse().map((c) => ({ c }));
  const apps = new Map();
  for (const c of list) {
    const v = view(c);
    let hosts = apps.get(v.exe);
    if (!hosts) apps.set(v.exe, (hosts = new Map()));
    const h = v.host;
    let l = hosts.get(h);
    if (!l) hosts.set(h, (l = []));
    l.push(c);
  }
  const rows = [];
  const names = [...apps.keys()].sort();
  for (const exe of names) {
    const hosts = apps.get(exe);
    let n = 0;
    for (const l of hosts.values()) n += l.length;
    rows.push({ app: exe, name: view(hosts.values().next().value[0]).name, n });
    for (const [h, l] of [...hosts.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      rows.push({ host: h, n: l.length });
      for (let i = l.length - 1; i >= 0; i--) rows.push({ c: l[i] });
    }
  }
  return rows;
}

function Row({ r, top, onRule }) {
  const style = { top: top + 'px' };
  if (r.app !== undefined) {
    return html`<div class="lrow group-app" style=${style}><span title=${r.app}>${r.name}</span>
      <span class="mono dim">${r.app}</span><span class="count">${r.n}</span></div>`;
  }
  if (r.host !== undefined) {
    return html`<div class="lrow group-host" style=${style}><span>${r.host}</span><span class="count">${r.n}</span></div>`;
  }
  const c = r.c;
  const v = view(c);
  return html`<div class="lrow conn ${verdictClass(c)}" style=${style} data-conn=${c.id}>
    <span class="t">${timeOf(c.time)}</span>
    <span class="app" title=${v.ctr ? v.exe + ' in container ' + v.ctr : v.exe}>${v.name}${v.ctr ? html` <span class="ctr">[${v.ctr}]</span>` : null}</span>
    <span class="d">${v.dest}</span>
    <span class="dir">${c.direction}</span>
    <span class="verdict">${c.reason === 'timeout' ? c.verdict + ' (timeout)' : c.verdict}</span>
    <span class="why">${reasonText(c)}</span>
    <button type="button" class="small" title="make a rule from this row" onClick=${() => onRule(c)}>rule…</button>
  </div>`;
}

export function Live({ conns, version, onRule, paused, setPaused }) {
  // A benchmark may set window.latchRenderTimes to an array: each render's time, from
  // here to the DOM committed, is pushed to it.
  const t0 = performance.now();
  useLayoutEffect(() => {
    if (Array.isArray(window.latchRenderTimes)) window.latchRenderTimes.push(performance.now() - t0);
  });
  const [f, setF] = useState({ app: '', verdict: '', dir: '', time: '' });
  const [grouped, setGrouped] = useState(true);
  const [scroll, setScroll] = useState(0);
  const [height, setHeight] = useState(600);
  const box = useRef(null);
  const rows = useMemo(() => rowsOf(conns, f, grouped), [version, f, grouped]);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const measure = () => setHeight(el.clientHeight || 600);
    measure();
    window.addEventListener('resize', measure);
    return () => window.removeEventListener('resize', measure);
  }, []);
  const first = Math.max(0, Math.floor(scroll / ROW) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((scroll + height) / ROW) + OVERSCAN);
  const visible = [];
  for (let i = first; i < last; i++) visible.push(html`<${Row} key=${i} r=${rows[i]} top=${i * ROW} onRule=${onRule} />`);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  return html`<section class="live">
    <div class="toolbar">
      <input type="search" placeholder="app or host" value=${f.app} onInput=${set('app')} aria-label="filter by app or host" />
      <select value=${f.verdict} onChange=${set('verdict')} aria-label="verdict">
        <option value="">every verdict</option><option value="allow">allow</option><option value="deny">deny</option>
        <option value="reject">reject</option><option value="drop">drop</option><option value="timeout">timeout</option>
      </select>
      <select value=${f.dir} onChange=${set('dir')} aria-label="direction">
        <option value="">both directions</option><option value="out">outbound</option><option value="in">inbound</option>
      </select>
      <select value=${f.time} onChange=${set('time')} aria-label="time">
        <option value="">any time</option><option value="60">last minute</option><option value="300">last 5 minutes</option><option value="3600">last hour</option>
      </select>
      <label><input type="checkbox" checked=${grouped} onChange=${(e) => setGrouped(e.target.checked)} /> group app → host</label>
      <label><input type="checkbox" checked=${paused} onChange=${(e) => setPaused(e.target.checked)} /> pause</label>
      <span class="dim">${rows.length} rows · ${conns.length} connections</span>
    </div>
    <div class="lhead"><span class="t">time</span><span class="app">program</span><span class="d">destination</span><span class="dir">dir</span><span class="verdict">verdict</span><span class="why">rule / reason</span><span></span></div>
    <div class="lbox" ref=${box} onScroll=${(e) => setScroll(e.target.scrollTop)}>
      <div class="lspace" style=${{ height: rows.length * ROW + 'px' }}>${visible}</div>
    </div>
  </section>`;
}
