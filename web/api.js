// The web UI's calls to the daemon: the local API's endpoints under /api/v1 (the same
// JSON the command line gets), each with the session's key. The cookie alone opens
// nothing: the key comes once, in the page /login answers (login.js), and lives in this
// tab's sessionStorage.

const KEY = 'latch-key';
let key = '';

// headers are the headers every request to /api/ carries.
export function headers() { return { 'X-Latch-Key': key }; }

// login checks this tab's session key with the daemon; false when not logged in.
export async function login() {
  key = sessionStorage.getItem(KEY) || '';
  if (!key) return false;
  const r = await fetch('/api/session', { credentials: 'same-origin', headers: headers() });
  if (!r.ok) {
    sessionStorage.removeItem(KEY);
    return false;
  }
  return true;
}

// call sends a request and returns the parsed JSON reply; a reply other than 2xx
// throws an Error whose message is the daemon's error text.
export async function call(method, path, body) {
  const opts = { method, headers: headers(), credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let j = null;
  try { j = JSON.parse(text); } catch (e) { /* not JSON */ }
  if (!r.ok) throw new Error(j && j.error ? j.error : `${r.status} ${r.statusText}`);
  return j === null ? text : j;
}

export const get = (path) => call('GET', path);

// stream opens the server-sent event stream and calls onEvent with each event; it
// reconnects by itself (EventSource), calling onState(true|false) as it goes.
export function stream(onEvent, onState) {
  // EventSource sends no headers: the key goes in the URL, of this request only.
  const es = new EventSource('/api/events?key=' + encodeURIComponent(key));
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (e) { return; }
    onEvent(ev);
  };
  es.onopen = () => onState(true);
  es.onerror = () => onState(false);
  return () => es.close();
}
