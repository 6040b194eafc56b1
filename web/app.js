// latch's web UI: questions, live connections, rules, history, programs and status,
// over the daemon's API (/api/v1) and its event stream (/api/events).
import { render } from 'preact';
import { useEffect, useState, useRef } from 'preact/hooks';
import { login, get, stream } from './api.js';
import { html, field, progName, dest } from './util.js';
import { Questions } from './questions.js';
import { Live } from './live.js';
import { Rules } from './rules.js';
import { History } from './history.js';
import { Programs, Program } from './programs.js';
import { Status } from './status.js';

const MAX_CONNS = 10000;

const views = [
  ['questions', 'Questions'], ['live', 'Live'], ['rules', 'Rules'], ['history', 'History'], ['programs', 'Programs'], ['status', 'Status'],
];

function route() {
  const h = location.hash.replace(/^#\/?/, '');
  const [view, ...rest] = h.split('/');
  return { view: views.some((v) => v[0] === view) ? view : 'questions', arg: rest.length ? decodeURIComponent(rest.join('/')) : '' };
}

// draftFromConn makes the rule form's fields for "a rule like this connection".
function draftFromConn(c) {
  return {
    app: c.exe || '', dir: c.direction || 'any', proto: c.proto || 'any',
    host: c.host || '', remote: c.host ? '' : c.remote_ip || '', port: c.remote_port ? String(c.remote_port) : '',
    action: c.verdict === 'allow' ? 'allow' : 'deny', for: 'forever',
  };
}

function App() {
  const [r, setRoute] = useState(route());
  const [online, setOnline] = useState(false);
  const [prompts, setPrompts] = useState([]);
  const [rules, setRules] = useState([]);
  const [status, setStatus] = useState(null);
  const [version, setVersion] = useState(0);
  const [paused, setPaused] = useState(false);
  const [draft, setDraft] = useState(null);
  const [notifyOn, setNotifyOn] = useState(typeof Notification !== 'undefined' && Notification.permission === 'granted' && localStorage.getItem('latch-notify') === '1');
  const conns = useRef([]);
  const seen = useRef(new Set());
  const frame = useRef(0);
  const pausedRef = useRef(false);
  const notifyRef = useRef(false);
  pausedRef.current = paused;
  notifyRef.current = notifyOn;

  useEffect(() => {
    const onHash = () => setRoute(route());
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  useEffect(() => { localStorage.setItem('latch-notify', notifyOn ? '1' : '0'); }, [notifyOn]);

  const bump = () => {
    if (pausedRef.current || frame.current) return;
    frame.current = requestAnimationFrame(() => { frame.current = 0; setVersion((v) => v + 1); });
  };
  const addConns = (list) => {
    const cs = conns.current;
    for (const c of list) {
      if (seen.current.has(c.id)) continue;
      seen.current.add(c.id);
      cs.push(c);
    }
    if (cs.length > MAX_CONNS) {
      for (const c of cs.splice(0, cs.length - MAX_CONNS)) seen.current.delete(c.id);
    }
    bump();
  };
  useEffect(() => { if (!paused) bump(); }, [paused]);

  useEffect(() => {
    // On (re)connect the page loads the current state while events keep coming: what
    // the events say after hello wins over the loaded snapshot, which may be older.
    let since = null;
    const reload = async () => {
      since = { added: new Map(), removed: new Set(), rules: false };
      const mine = since;
      const [ps, rs, cs, st] = await Promise.all([get('/api/v1/prompts'), get('/api/v1/rules'),
        get('/api/v1/conns?n=1000').catch(() => ({ conns: [] })), get('/api/v1/status').catch(() => null)]);
      if (since !== mine) return; // a newer hello took over
      const list = ps.prompts.filter((p) => !mine.removed.has(p.id));
      for (const p of mine.added.values()) if (!list.some((q) => q.id === p.id)) list.push(p);
      list.sort((a, b) => a.id - b.id);
      setPrompts(list);
      if (!mine.rules) setRules(rs.rules);
      if (st) setStatus(st);
      addConns(cs.conns);
      since = null;
    };
    return stream((ev) => {
      switch (ev.kind) {
        case 'hello': reload(); break;
        case 'gap': reload(); break; // events were lost: questions, rules and connections again
        case 'prompt':
          if (since) since.added.set(ev.prompt.id, ev.prompt);
          setPrompts((ps) => ps.some((p) => p.id === ev.prompt.id) ? ps : [...ps, ev.prompt]);
          if (notifyRef.current && document.hidden) {
            const p = ev.prompt;
            // Plain text, escaped like the page; clicking shows the tab, nothing steals focus by itself.
            const n = new Notification(`latch: ${progName(p)}`, { body: `${field(p, 'exe')} → ${dest(p)}`, tag: 'latch-' + p.id });
            n.onclick = () => { window.focus(); n.close(); };
          }
          break;
        case 'answered':
          if (since) { since.removed.add(ev.prompt.id); since.added.delete(ev.prompt.id); }
          setPrompts((ps) => ps.filter((p) => p.id !== ev.prompt.id));
          break;
        case 'rules':
          if (since) since.rules = true;
          setRules(ev.rules || []);
          break;
        case 'conns': addConns(ev.conns); break;
      }
    }, setOnline);
  }, []);

  useEffect(() => { document.title = prompts.length ? `(${prompts.length}) latch` : 'latch'; }, [prompts.length]);

  const makeRule = (c) => { setDraft(draftFromConn(c)); location.hash = '#/rules'; };
  let body;
  switch (r.view) {
    case 'live': body = html`<${Live} conns=${conns.current} version=${version} onRule=${makeRule} paused=${paused} setPaused=${setPaused} />`; break;
    case 'rules': body = html`<${Rules} rules=${rules} draft=${draft} clearDraft=${() => setDraft(null)} />`; break;
    case 'history': body = html`<${History} />`; break;
    case 'programs': body = r.arg ? html`<${Program} exe=${r.arg} rules=${rules} version=${version} onRule=${makeRule} />` : html`<${Programs} version=${version} />`; break;
    case 'status': body = html`<${Status} onStatus=${setStatus} />`; break;
    default: body = html`<${Questions} prompts=${prompts} status=${status} notifyOn=${notifyOn} setNotifyOn=${setNotifyOn} />`;
  }
  return html`<div class="shell">
    <nav class="top">
      <span class="brand">latch</span>
      ${views.map(([v, label]) => html`<a href=${'#/' + v} class=${r.view === v ? 'on' : ''} data-view=${v}>${label}${v === 'questions' && prompts.length ? html` <span class="badge">${prompts.length}</span>` : null}</a>`)}
      <span class=${'conn-state ' + (online ? 'ok' : 'down')}>${online ? 'connected' : 'reconnecting…'}</span>
    </nav>
    <main>${body}</main>
  </div>`;
}

async function start() {
  const root = document.getElementById('app');
  if (!(await login())) {
    root.textContent = 'Not logged in in this tab (a session belongs to the tab it was opened in). Run `latch web open`, or `sudo latch web url` and open the URL it prints.';
    return;
  }
  root.textContent = '';
  render(html`<${App} />`, root);
}

start();
