// Rules: a sortable, searchable table; add, edit and delete with the command line's
// validation and errors (POST /api/rules/form parses like `latch rules add`); undo a
// delete; import with a preview of what changes; export as a file.
import { useState, useMemo, useEffect, useRef } from 'preact/hooks';
import { call, headers } from './api.js';
import { html, esc, dateTime, ruleToForm } from './util.js';

const emptyForm = { app: '', user: '', dir: 'any', proto: 'any', host: '', remote: '', port: '', local_port: '', action: 'allow', for: 'forever', note: '' };
const cols = [
  ['rank', 'rank'], ['id', 'id'], ['action', 'action'], ['dir', 'dir'], ['proto', 'proto'], ['app', 'app'], ['user', 'user'],
  ['host', 'host'], ['remote', 'remote'], ['port', 'port'], ['local_port', 'local port'], ['expires', 'expires'], ['note', 'note'],
];

// ruleKey identifies a rule by what it does (not its id or creation time), for the
// import preview: fields left out are their defaults.
function ruleKey(r) {
  let remote = r.remote || '';
  if (remote && !remote.includes('/')) remote += remote.includes(':') ? '/128' : '/32';
  return JSON.stringify([r.app || '', r.user || '', r.service || '', (r.host || '').toLowerCase().replace(/\.$/, ''),
    r.dir || 'any', r.proto || 'any', remote, String(r.port || ''), String(r.local_port || ''), r.action || '',
    r.expires || '', r.note || '']);
}

function ruleText(r) {
  const parts = [r.action];
  if (r.dir && r.dir !== 'any') parts.push(r.dir);
  if (r.proto && r.proto !== 'any') parts.push(r.proto);
  for (const k of ['app', 'user', 'host', 'remote', 'port', 'local_port']) if (r[k]) parts.push(`${k} ${r[k]}`);
  if (r.expires) parts.push('until ' + dateTime(r.expires));
  return parts.join(' · ');
}

function RuleForm({ form, setForm, onSubmit, onCancel, editing, error }) {
  const field = (k, label, ph) => html`<label>${label}<input name=${k} value=${form[k]} placeholder=${ph || ''}
    onInput=${(e) => setForm({ ...form, [k]: e.target.value })} /></label>`;
  const select = (k, label, opts) => html`<label>${label}<select name=${k} value=${form[k]}
    onChange=${(e) => setForm({ ...form, [k]: e.target.value })}>${opts.map((o) => html`<option value=${o}>${o}</option>`)}</select></label>`;
  return html`<form class="ruleform" onSubmit=${(e) => { e.preventDefault(); onSubmit(); }}>
    <h3>${editing ? `Edit rule ${editing}` : 'Add a rule'}</h3>
    <div class="grid">
      ${select('action', 'action', ['allow', 'deny', 'reject', 'drop'])}
      ${field('app', 'app', '/usr/bin/curl or /usr/lib/firefox/**')}
      ${field('user', 'user', 'name or uid')}
      ${select('dir', 'direction', ['any', 'out', 'in'])}
      ${select('proto', 'protocol', ['any', 'tcp', 'udp', 'icmp', 'icmpv6'])}
      ${field('host', 'host', 'www.example.com or *.example.com')}
      ${field('remote', 'remote', 'IP or CIDR')}
      ${field('port', 'port', 'N or N-M')}
      ${field('local_port', 'local port', 'N or N-M')}
      ${field('for', 'for', 'forever, 90m, 7d')}
      ${field('note', 'note')}
    </div>
    ${error ? html`<p class="error" role="alert">${esc(error)}</p>` : null}
    <div class="actions">
      <button type="submit" class="primary">${editing ? 'Save' : 'Add'}</button>
      ${onCancel ? html`<button type="button" onClick=${onCancel}>Cancel</button>` : null}
    </div>
  </form>`;
}

export function Rules({ rules, draft, clearDraft }) {
  const [q, setQ] = useState('');
  const [sort, setSort] = useState(['rank', 1]);
  const [form, setForm] = useState(emptyForm);
  const [editing, setEditing] = useState(0);
  const [error, setError] = useState('');
  const [undo, setUndo] = useState(null);
  const [importing, setImporting] = useState(null);
  const [msg, setMsg] = useState('');
  const [order, setOrder] = useState([]);
  // gen counts forms started (edit, draft): a reply to an earlier submit must not
  // clear a form the user has begun since.
  const gen = useRef(0);
  useEffect(() => {
    call('GET', '/api/v1/rules/precedence').then((b) => setOrder(b.order), () => setOrder([]));
  }, [rules]);
  const rank = useMemo(() => new Map(order.map((id, i) => [id, i + 1])), [order]);

  // A row of the live view or a program page may hand over a draft rule.
  useEffect(() => {
    if (!draft) return;
    gen.current++;
    setForm({ ...emptyForm, ...draft });
    setEditing(0);
    setError('');
    clearDraft();
  }, [draft]);

  const shown = useMemo(() => {
    const needle = q.toLowerCase();
    const list = rules.filter((r) => !needle || JSON.stringify(r).toLowerCase().includes(needle))
      .map((r) => ({ ...r, rank: rank.get(r.id) || 0 }));
    const [k, dir] = sort;
    return list.slice().sort((a, b) => {
      const x = a[k] ?? '', y = b[k] ?? '';
      return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true })) * dir;
    });
  }, [rules, q, sort, rank]);

  const submit = async () => {
    const mine = gen.current;
    try {
      const body = { ...form };
      if (editing) body.replace = editing;
      const r = await call('POST', '/api/rules/form', body);
      setMsg(editing ? `saved rule ${r.id} (was ${editing})` : `added rule ${r.id}`);
      if (gen.current === mine) {
        setForm(emptyForm);
        setEditing(0);
        setError('');
      }
    } catch (e) {
      if (gen.current === mine) setError(e.message);
    }
  };
  const remove = async (r) => {
    try {
      const removed = await call('DELETE', `/api/v1/rules/${r.id}`);
      setUndo(removed);
      setMsg('');
    } catch (e) {
      setMsg(e.message);
    }
  };
  const undoRemove = async () => {
    const { id, ...rest } = undo;
    try {
      const r = await call('POST', '/api/v1/rules', rest);
      setMsg(`restored as rule ${r.id}`);
      setUndo(null);
    } catch (e) {
      setMsg(e.message);
    }
  };
  const exportRules = async () => {
    const r = await fetch('/api/v1/rules/export', { credentials: 'same-origin', headers: headers() });
    const blob = new Blob([await r.text()], { type: 'application/json' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'latch-rules.json';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };
  const pickImport = async (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (!file) return;
    const text = await file.text();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      setImporting({ name: file.name, error: 'not JSON: ' + err.message });
      return;
    }
    const incoming = Array.isArray(parsed && parsed.rules) ? parsed.rules : [];
    const have = new Set(rules.map(ruleKey)), want = new Set(incoming.map(ruleKey));
    setImporting({
      name: file.name, text,
      added: incoming.filter((r) => !have.has(ruleKey(r))),
      removed: rules.filter((r) => !want.has(ruleKey(r))),
      same: incoming.filter((r) => have.has(ruleKey(r))).length,
    });
  };
  const doImport = async () => {
    try {
      const r = await call('POST', '/api/v1/rules/import', importing.text);
      setMsg(`imported ${r.rules.length} rules from ${importing.name}`);
      setImporting(null);
    } catch (e) {
      setImporting({ ...importing, error: e.message });
    }
  };

  return html`<section class="rules">
    <div class="toolbar">
      <input type="search" placeholder="search rules" value=${q} onInput=${(e) => setQ(e.target.value)} aria-label="search rules" />
      <button type="button" onClick=${exportRules}>Export</button>
      <label class="button">Import…<input type="file" accept=".json,application/json" hidden onChange=${pickImport} /></label>
      <span class="dim">${shown.length} of ${rules.length} rules · rank: of the rules that match a connection, the lowest rank decides (the most specific; at equal specificity deny beats allow)</span>
    </div>
    ${undo ? html`<div class="toast">Deleted rule ${undo.id} (${esc(ruleText(undo))}). <button type="button" onClick=${undoRemove}>Undo</button></div>` : null}
    ${msg ? html`<div class="toast info">${esc(msg)}</div>` : null}
    ${importing ? html`<div class="importbox">
      <h3>Import ${esc(importing.name)}: replaces every rule</h3>
      ${importing.error ? html`<p class="error" role="alert">${esc(importing.error)}</p>` : null}
      ${importing.added ? html`
        <p>${importing.added.length} new · ${importing.removed.length} removed · ${importing.same} unchanged</p>
        <ul class="diff">
          ${importing.added.map((r) => html`<li class="plus">+ ${esc(ruleText(r))}</li>`)}
          ${importing.removed.map((r) => html`<li class="minus">− rule ${r.id}: ${esc(ruleText(r))}</li>`)}
        </ul>
        <button type="button" class="primary" onClick=${doImport}>Replace the rules</button>` : null}
      <button type="button" onClick=${() => setImporting(null)}>Cancel</button>
    </div>` : null}
    <${RuleForm} form=${form} setForm=${setForm} onSubmit=${submit} editing=${editing} error=${error}
      onCancel=${editing || error ? () => { setEditing(0); setForm(emptyForm); setError(''); } : null} />
    <table class="table">
      <thead><tr>${cols.map(([k, label]) => html`<th class="sortable" onClick=${() => setSort([k, sort[0] === k ? -sort[1] : 1])}>
        ${label}${sort[0] === k ? (sort[1] > 0 ? ' ▲' : ' ▼') : ''}</th>`)}<th></th></tr></thead>
      <tbody>
        ${shown.map((r) => html`<tr key=${r.id} data-rule=${r.id}>
          <td title="1 wins over every other rule that matches too">${r.rank || ''}</td><td>${r.id}</td><td class=${'v-' + r.action}>${r.action}</td><td>${r.dir}</td><td>${r.proto}</td>
          <td class="mono">${esc(r.app || '')}</td><td>${esc(r.user || '')}</td><td>${esc(r.host || '')}</td>
          <td>${r.remote || ''}</td><td>${r.port || ''}</td><td>${r.local_port || ''}</td>
          <td>${r.expires ? dateTime(r.expires) : 'never'}</td><td>${esc(r.note || '')}</td>
          <td class="rowbtns">
            <button type="button" class="small" onClick=${() => { gen.current++; setForm(ruleToForm(r)); setEditing(r.id); setError(''); }}>edit</button>
            <button type="button" class="small danger" onClick=${() => remove(r)}>delete</button>
          </td></tr>`)}
      </tbody>
    </table>
  </section>`;
}
