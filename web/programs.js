// Programs: every program the history knows, and one page per program with its rules,
// its recent connections and its counts.
import { useEffect, useState } from 'preact/hooks';
import { get } from './api.js';
import { html, esc, base, dest, timeOf, dateTime, verdictClass, reasonText, globMatch, containerText } from './util.js';

export function Programs({ version }) {
  const [ps, setPs] = useState(null);
  const [error, setError] = useState('');
  useEffect(() => {
    get('/api/v1/programs').then((b) => { setPs(b.programs); setError(''); }, (e) => setError(e.message));
  }, [Math.floor(version / 50)]);
  return html`<section class="programs">
    ${error ? html`<p class="error" role="alert">${esc(error)}</p>` : null}
    ${ps && ps.length === 0 ? html`<p class="empty">No connections recorded yet.</p>` : null}
    <table class="table"><thead><tr><th>program</th><th>first seen</th><th>last seen</th><th>total</th><th>allowed</th><th>denied</th><th>timed out</th></tr></thead>
    <tbody>${(ps || []).map((p) => html`<tr data-exe=${p.exe}>
      <td><a href=${'#/programs/' + encodeURIComponent(p.exe)}><b>${esc(base(p.exe))}</b></a> <span class="mono dim">${esc(p.exe)}</span></td>
      <td>${dateTime(p.first_seen)}</td><td>${dateTime(p.last_seen)}</td><td>${p.total}</td>
      <td class="v-allow">${p.allowed}</td><td class="v-deny">${p.denied}</td><td class="v-timeout">${p.timeout}</td></tr>`)}
    </tbody></table>
  </section>`;
}

export function Program({ exe, rules, version, onRule }) {
  const [info, setInfo] = useState(null);
  const [conns, setConns] = useState([]);
  const [error, setError] = useState('');
  useEffect(() => {
    Promise.all([get('/api/v1/programs'), get('/api/v1/programs/conns?n=200&exe=' + encodeURIComponent(exe))]).then(([ps, cs]) => {
      setInfo(ps.programs.find((p) => p.exe === exe) || null);
      setConns(cs.conns.slice().reverse());
      setError('');
    }, (e) => setError(e.message));
  }, [exe, Math.floor(version / 20)]);
  const mine = rules.filter((r) => r.app && globMatch(r.app, exe));
  return html`<section class="program">
    <p><a href="#/programs">← all programs</a></p>
    <h2>${esc(base(exe))} <span class="mono dim">${esc(exe)}</span></h2>
    ${error ? html`<p class="error" role="alert">${esc(error)}</p>` : null}
    ${info ? html`<dl class="facts wide">
      <dt>first seen</dt><dd>${dateTime(info.first_seen)}</dd><dt>last seen</dt><dd>${dateTime(info.last_seen)}</dd>
      <dt>connections</dt><dd>${info.total}: <span class="v-allow">${info.allowed} allowed</span>, <span class="v-deny">${info.denied} denied</span>, <span class="v-timeout">${info.timeout} timed out</span></dd>
    </dl>` : null}
    <h3>Rules for this program (${mine.length})</h3>
    ${mine.length === 0 ? html`<p class="empty">No rule names this program; rules without an app still apply.</p>` : html`
      <table class="table"><thead><tr><th>id</th><th>action</th><th>app</th><th>host</th><th>remote</th><th>port</th><th>expires</th></tr></thead>
      <tbody>${mine.map((r) => html`<tr><td>${r.id}</td><td class=${'v-' + r.action}>${r.action}</td><td class="mono">${esc(r.app)}</td>
        <td>${esc(r.host || '')}</td><td>${r.remote || ''}</td><td>${r.port || ''}</td><td>${r.expires ? dateTime(r.expires) : 'never'}</td></tr>`)}</tbody></table>`}
    <h3>Recent connections</h3>
    <table class="table"><thead><tr><th>time</th><th>destination</th><th>dir</th><th>verdict</th><th>rule / reason</th><th>pid</th><th>container</th><th></th></tr></thead>
    <tbody>${conns.map((c) => html`<tr class=${verdictClass(c)}><td>${timeOf(c.time)}</td><td>${dest(c)}</td><td>${c.direction}</td>
      <td class="verdict">${c.verdict}</td><td>${reasonText(c)}</td><td>${c.pid}</td><td class="ctr">${containerText(c)}</td>
      <td><button type="button" class="small" onClick=${() => onRule(c)}>rule…</button></td></tr>`)}</tbody></table>
  </section>`;
}
