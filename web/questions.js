// Questions: one card per open question, answered by mouse or keyboard.
import { useEffect, useState, useRef } from 'preact/hooks';
import { call } from './api.js';
import { html, esc, field, progName, dest, containerText } from './util.js';

export const scopes = ['app', 'app+host', 'app+port', 'app+host+port'];
export const lifetimes = ['once', '5m', '1h', '1d', 'forever'];
const lifetimeLabel = { once: 'once', '5m': '5 min', '1h': '1 hour', '1d': '1 day', forever: 'forever' };

// Countdown shows how long until the default applies.
function Countdown({ p, def }) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, []);
  const opened = Date.parse(p.opened), expires = Date.parse(p.expires);
  const total = Math.max(1, expires - opened);
  const left = Math.max(0, expires - now);
  const frac = Math.min(1, left / total);
  return html`<div class="countdown" title="when nobody answers, ${def || 'the default'} applies">
    <div class="countdown-bar ${frac < 0.25 ? 'low' : ''}" style=${{ width: (frac * 100).toFixed(1) + '%' }}></div>
    <span class="countdown-text">${def || 'default'} in ${Math.ceil(left / 1000)}s</span>
  </div>`;
}

function Card({ p, selected, choice, setChoice, onAnswer, error, def, onSelect }) {
  const ref = useRef(null);
  useEffect(() => {
    // Keep the selected card in view (this scrolls; it never moves the focus).
    if (selected && ref.current && ref.current.scrollIntoView) ref.current.scrollIntoView({ block: 'nearest' });
  }, [selected]);
  return html`<article ref=${ref} class="card ${selected ? 'selected' : ''}" data-prompt=${p.id} data-opened=${p.opened} data-exe=${p.exe} onClick=${onSelect}>
    <header>
      <h2 class="prog" title=${field(p, 'exe')}>${progName(p)}</h2>
      <span class="dir dir-${p.direction}">${p.direction === 'in' ? 'inbound' : 'outbound'}</span>
      ${p.held > 1 ? html`<span class="held">${p.held} connections waiting</span>` : null}
    </header>
    <div class="dest">${dest(p)}</div>
    ${p.identity && p.identity !== 'verified' ? html`<p class="identity">${p.identity === 'container' ? `in container ${containerText(p)}` : 'identity not verified'}${p.identity_note ? ': ' + esc(p.identity_note) : ''} — an answer holds for this connection only</p>` : null}
    <dl class="facts">
      <dt>exe</dt><dd class="mono">${p.exe ? field(p, 'exe') : 'unknown'}</dd>
      <dt>pid</dt><dd>${p.pid || '?'}</dd>
      <dt>user</dt><dd>${field(p, 'user')}${p.uid >= 0 ? ` (${p.uid})` : ''}</dd>
      ${p.parent_exe || p.parent ? html`<dt>parent</dt><dd class="mono">${esc(p.parent_exe || p.parent)}${p.ppid ? ` (${p.ppid})` : ''}</dd>` : null}
    </dl>
    ${p.cmdline ? html`<details class="cmdline"><summary>command line</summary><code>${field(p, 'cmdline')}</code></details>` : null}
    <${Countdown} p=${p} def=${def} />
    <div class="choices">
      <div class="seg" role="group" aria-label="scope">
        ${scopes.map((s, i) => html`<button type="button" class=${choice.scope === s ? 'on' : ''}
          onClick=${(e) => { e.stopPropagation(); setChoice({ ...choice, scope: s }); }}
          title="key ${i + 1}">${s}</button>`)}
      </div>
      <div class="seg" role="group" aria-label="lifetime">
        ${lifetimes.map((l) => html`<button type="button" class=${choice.life === l ? 'on' : ''}
          onClick=${(e) => { e.stopPropagation(); setChoice({ ...choice, life: l }); }}
          title="← →">${lifetimeLabel[l]}</button>`)}
      </div>
    </div>
    <div class="actions">
      <button type="button" class="allow" onClick=${(e) => { e.stopPropagation(); onAnswer('allow'); }}>Allow <kbd>a</kbd></button>
      <button type="button" class="deny" onClick=${(e) => { e.stopPropagation(); onAnswer('deny'); }}>Deny <kbd>d</kbd></button>
      <details class="more" onClick=${(e) => e.stopPropagation()}>
        <summary>more</summary>
        <div class="menu">
          <button type="button" onClick=${() => onAnswer('reject')}>Reject (tell the program: ICMP unreachable / reset)</button>
          <button type="button" onClick=${() => onAnswer('drop')}>Drop (silently; the program waits)</button>
        </div>
      </details>
    </div>
    ${error ? html`<p class="error" role="alert">${esc(error)}</p>` : null}
  </article>`;
}

export function Questions({ prompts, status, notifyOn, setNotifyOn }) {
  const [sel, setSel] = useState(0);
  const [choices, setChoices] = useState({});
  const [errors, setErrors] = useState({});
  const def = status && status.default;
  const defaultChoice = { scope: 'app+host+port', life: 'once' };
  // latest holds the choices as keys set them: keys may come faster than the page
  // renders, and an answer must use what was chosen last.
  const latest = useRef({});
  const choiceOf = (p) => choices[p.id] || defaultChoice;
  const updateChoice = (p, f) => {
    latest.current = { ...latest.current, [p.id]: f(latest.current[p.id] || defaultChoice) };
    setChoices(latest.current);
  };
  const setChoice = (p, c) => updateChoice(p, () => c);
  const idx = Math.min(sel, Math.max(0, prompts.length - 1));

  const answer = async (p, action) => {
    const c = latest.current[p.id] || defaultChoice;
    try {
      await call('POST', `/api/v1/prompts/${p.id}/answer`, { action, for: c.life, scope: c.scope });
      setErrors((e) => ({ ...e, [p.id]: '' }));
    } catch (err) {
      setErrors((e) => ({ ...e, [p.id]: err.message }));
    }
  };

  // The key handler is registered once and reads the latest state from here: a key
  // pressed before an effect re-registers a handler must not act on an old card.
  const now = useRef({});
  now.current = { prompts, idx, answer, updateChoice };
  useEffect(() => {
    const onKey = (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const t = e.target;
      if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT')) return;
      const { prompts, idx, answer, updateChoice } = now.current;
      const p = prompts[idx];
      switch (e.key) {
        case 'j': setSel(Math.min(idx + 1, prompts.length - 1)); now.current.idx = Math.min(idx + 1, prompts.length - 1); break;
        case 'k': setSel(Math.max(idx - 1, 0)); now.current.idx = Math.max(idx - 1, 0); break;
        case '1': case '2': case '3': case '4':
          if (p) updateChoice(p, (c) => ({ ...c, scope: scopes[Number(e.key) - 1] }));
          break;
        case 'ArrowLeft': case 'ArrowRight': {
          if (!p) break;
          const step = e.key === 'ArrowRight' ? 1 : -1;
          updateChoice(p, (c) => ({ ...c, life: lifetimes[Math.max(0, Math.min(lifetimes.length - 1, lifetimes.indexOf(c.life) + step))] }));
          break;
        }
        case 'a': if (p) answer(p, 'allow'); break;
        case 'd': if (p) answer(p, 'deny'); break;
        default: return;
      }
      e.preventDefault();
    };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, []);

  const canNotify = typeof Notification !== 'undefined';
  return html`<section class="questions">
    <div class="toolbar">
      <span class="hint">keys: <kbd>j</kbd>/<kbd>k</kbd> card · <kbd>1</kbd>–<kbd>4</kbd> scope · <kbd>←</kbd>/<kbd>→</kbd> lifetime · <kbd>a</kbd> allow · <kbd>d</kbd> deny</span>
      ${canNotify ? html`<label class="notify"><input type="checkbox" checked=${notifyOn}
        onChange=${async (e) => {
          if (e.target.checked && Notification.permission !== 'granted') {
            const r = await Notification.requestPermission();
            setNotifyOn(r === 'granted');
          } else setNotifyOn(e.target.checked);
        }} /> desktop notifications</label>` : null}
    </div>
    ${prompts.length === 0
      ? html`<p class="empty">No open questions. New connections no rule decides will appear here.</p>`
      : prompts.map((p, i) => html`<${Card} key=${p.id} p=${p} selected=${i === idx} def=${def}
          choice=${choiceOf(p)} setChoice=${(c) => setChoice(p, c)} error=${errors[p.id]}
          onSelect=${() => setSel(i)} onAnswer=${(a) => answer(p, a)} />`)}
  </section>`;
}
