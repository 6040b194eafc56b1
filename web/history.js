// History: connections per minute (allowed, denied, timed out) over a time range, and
// the programs and hosts with the most connections in it.
import { useEffect, useState, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { get } from './api.js';
import { html, esc, base } from './util.js';

const ranges = [
  ['15m', 900, 60], ['1h', 3600, 60], ['6h', 21600, 60], ['24h', 86400, 300], ['7d', 604800, 3600],
];

function Chart({ sum }) {
  const box = useRef(null);
  useEffect(() => {
    if (!sum || !box.current) return;
    const xs = sum.buckets.map((b) => Date.parse(b.start) / 1000);
    const data = [xs, sum.buckets.map((b) => b.allowed), sum.buckets.map((b) => b.denied), sum.buckets.map((b) => b.timeout)];
    const width = Math.max(320, box.current.clientWidth || 800);
    const series = (label, stroke, fill) => ({ label, stroke, fill, width: 2, points: { show: false } });
    const u = new uPlot({
      width, height: 260,
      scales: { x: { time: true } },
      axes: [{ stroke: '#556' }, { stroke: '#556', label: `connections per ${sum.step >= 3600 ? 'hour' : sum.step >= 300 ? (sum.step / 60) + ' min' : 'minute'}` }],
      series: [{}, series('allowed', '#1a7f37', 'rgba(26,127,55,0.12)'), series('denied', '#cf222e', 'rgba(207,34,46,0.12)'),
        series('timed out', '#bf8700', 'rgba(191,135,0,0.12)')],
    }, data, box.current);
    return () => u.destroy();
  }, [sum]);
  return html`<div class="chart" ref=${box}></div>`;
}

function TopTable({ title, rows, link }) {
  return html`<div class="top"><h3>${title}</h3>
    <table class="table"><thead><tr><th></th><th>total</th><th>allowed</th><th>denied</th><th>timed out</th></tr></thead>
    <tbody>${rows.map((r) => html`<tr>
      <td class="mono" title=${esc(r.key)}>${link ? html`<a href=${'#/programs/' + encodeURIComponent(r.key)}>${esc(base(r.key))}</a> <span class="dim">${esc(r.key)}</span>` : esc(r.key)}</td>
      <td>${r.total}</td><td class="v-allow">${r.allowed}</td><td class="v-deny">${r.denied}</td><td class="v-timeout">${r.timeout}</td></tr>`)}
    </tbody></table>${rows.length === 0 ? html`<p class="empty">none</p>` : null}</div>`;
}

export function History() {
  const [range, setRange] = useState('1h');
  const [sum, setSum] = useState(null);
  const [error, setError] = useState('');
  const load = async () => {
    const [, secs, step] = ranges.find((r) => r[0] === range);
    const to = Math.floor(Date.now() / 1000) + 1;
    try {
      setSum(await get(`/api/v1/history?from=${to - secs}&to=${to}&step=${step}&top=10`));
      setError('');
    } catch (e) {
      setError(e.message);
    }
  };
  useEffect(() => {
    load();
    const t = setInterval(load, 10000);
    return () => clearInterval(t);
  }, [range]);
  const totals = sum ? sum.buckets.reduce((a, b) => [a[0] + b.allowed, a[1] + b.denied, a[2] + b.timeout], [0, 0, 0]) : [0, 0, 0];
  return html`<section class="history">
    <div class="toolbar">
      <div class="seg" role="group" aria-label="time range">${ranges.map(([r]) => html`<button type="button" class=${range === r ? 'on' : ''} onClick=${() => setRange(r)}>${r}</button>`)}</div>
      <button type="button" onClick=${load}>Refresh</button>
      <span class="dim">last ${range}: <span class="v-allow">${totals[0]} allowed</span> · <span class="v-deny">${totals[1]} denied</span> · <span class="v-timeout">${totals[2]} timed out</span></span>
    </div>
    ${error ? html`<p class="error" role="alert">${esc(error)}</p>` : null}
    <${Chart} sum=${sum} />
    ${sum ? html`<div class="tops"><${TopTable} title="Top programs" rows=${sum.top_programs} link=${true} /><${TopTable} title="Top hosts" rows=${sum.top_hosts} /></div>` : null}
  </section>`;
}
