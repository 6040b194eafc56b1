// Small helpers shared by the views.
import { h } from 'preact';
import htm from 'htm';
import { esc, escBytes, field } from './esc.js';

export const html = htm.bind(h);
export { esc, field };

// base is the last element of a path (either separator), the program's name.
export function base(p) {
  if (!p) return '?';
  const i = Math.max(p.lastIndexOf('/'), p.lastIndexOf('\\'));
  return i >= 0 && i < p.length - 1 ? p.slice(i + 1) : p;
}

// dest shows a connection's remote end as the command line does, escaped:
// host (ip):port/proto, or ip:port/proto when the name is unknown.
export function dest(c) {
  let ip = esc(c.remote_ip || '?');
  if (ip.includes(':')) ip = '[' + ip + ']';
  const port = c.remote_port ? ':' + c.remote_port : '';
  const where = c.host ? `${field(c, 'host')} (${ip})${port}` : `${ip}${port}`;
  return `${where}/${esc(c.proto)}`;
}

// containerText shows the container a program runs in, escaped: its label
// ("docker:0123456789ab", a 64-digit id cut to 12 as docker shows it) and the name
// its runtime gives it, marked as its user's for a user's own ("podman@1000:...")
// container; '' for none.
export function containerText(c) {
  if (!c || !c.container) return '';
  const i = c.container.indexOf(':');
  let label = c.container;
  if (i >= 0 && c.container.length - i - 1 === 64) label = c.container.slice(0, i + 13);
  let s = esc(label);
  if (c.container_name) {
    s += ' ' + field(c, 'container_name');
    if (i >= 0 && c.container.slice(0, i).includes('@')) s += " (its user's name)";
  }
  return s;
}

// progName shows the program's name (the last element of its exe path), escaped.
export function progName(o) {
  const raw = o && o.raw && o.raw.exe;
  if (typeof raw === 'string') {
    try {
      const b = Uint8Array.from(atob(raw), (ch) => ch.charCodeAt(0));
      let i = b.length - 1;
      while (i >= 0 && b[i] !== 0x2f && b[i] !== 0x5c) i--;
      return escBytes(i >= 0 && i < b.length - 1 ? b.subarray(i + 1) : b);
    } catch (e) { /* fall back to the string */ }
  }
  return esc(base(o ? o.exe : ''));
}

export function timeOf(t) {
  const d = new Date(t);
  return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
}

export function dateTime(t) {
  const d = new Date(t);
  return isNaN(d) || d.getFullYear() < 1971 ? '—' : d.toLocaleString([], { hour12: false });
}

// verdictClass colours a verdict; an unanswered question is a timeout.
export function verdictClass(c) {
  if (c.reason === 'timeout') return 'v-timeout';
  return 'v-' + (c.verdict || c.action || 'none');
}

export function reasonText(c) {
  if (c.reason === 'rule' && c.rule_id) return `rule ${c.rule_id}`;
  if (c.reason === 'prompt' && c.rule_id) return `answer (rule ${c.rule_id})`;
  return c.reason || '';
}

// globMatch reports whether a rule's app pattern matches path (path.Match syntax plus
// ** across directories), for listing a program's rules.
export function globMatch(pattern, path) {
  if (!pattern) return true;
  if (!/[*?[]/.test(pattern)) return pattern === path;
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*' && pattern[i + 1] === '*') { re += '.*'; i++; }
    else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const j = pattern.indexOf(']', i + 1);
      if (j < 0) return false;
      re += '[' + pattern.slice(i + 1, j).replace(/^\^|^!/, '^').replace(/\\/g, '\\\\') + ']';
      i = j;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  try { return new RegExp('^' + re + '$').test(path); } catch (e) { return false; }
}

// ruleForm turns a rule into the text fields of the rule form (`latch rules add`).
export function ruleToForm(r) {
  return {
    app: r.app || '', user: r.user || '', dir: r.dir || 'any', proto: r.proto || 'any',
    host: r.host || '', remote: r.remote || '', port: r.port ? String(r.port) : '',
    local_port: r.local_port ? String(r.local_port) : '', action: r.action || 'allow',
    for: 'forever', note: r.note || '',
  };
}
