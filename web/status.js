// Status: how the daemon runs and its counters.
import { useEffect, useState } from 'preact/hooks';
import { get } from './api.js';
import { html, esc, dateTime } from './util.js';

function Value({ v }) {
  if (v === null || v === undefined || v === '') return '—';
  if (Array.isArray(v)) return v.length ? esc(v.join(', ')) : '—';
  if (typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 0) return '—';
    return html`<dl class="facts">${keys.map((k) => html`<dt>${esc(k)}</dt><dd><${Value} v=${v[k]} /></dd>`)}</dl>`;
  }
  return esc(String(v));
}

export function Status({ onStatus }) {
  const [st, setSt] = useState(null);
  const [error, setError] = useState('');
  const load = () => get('/api/v1/status').then((s) => { setSt(s); onStatus(s); setError(''); }, (e) => setError(e.message));
  useEffect(() => {
    load();
    const t = setInterval(load, 5000);
    return () => clearInterval(t);
  }, []);
  if (error) return html`<p class="error" role="alert">${esc(error)}</p>`;
  if (!st) return html`<p class="dim">loading…</p>`;
  const main = [
    ['backend', st.backend], ['firewall mode', st.mode], ['default verdict', st.default], ['question timeout', st.prompt_timeout],
    ['inbound held', st.inbound ? 'yes' : 'no'], ['loopback exempt', st.exempt_loopback ? 'yes' : 'no'],
    ['attribution', st.attribution], ['version', st.version], ['pid', st.pid], ['started', dateTime(st.started)],
    ['rules', st.rules], ['open questions', st.pending_prompts], ['held connections', st.held_connections], ['state directory', st.state_dir],
  ];
  return html`<section class="status">
    <div class="cards">
      <div class="panel"><h3>Daemon</h3><dl class="facts">${main.map(([k, v]) => html`<dt>${k}</dt><dd><${Value} v=${v} /></dd>`)}</dl></div>
      <div class="panel"><h3>Kernel (queue overflows, attribution)</h3><${Value} v=${st.kernel} /></div>
      <div class="panel"><h3>Verdicts carried out</h3><${Value} v=${st.verdicts} /><h3>Decisions by reason</h3><${Value} v=${st.decisions} /></div>
      <div class="panel"><h3>History</h3><${Value} v=${st.history} /></div>
    </div>
  </section>`;
}
