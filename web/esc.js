// esc shows a string from outside (a path, a name, a host, a command line) so that
// nothing in it can deceive: the same rule as latch's command line (Go package
// internal/textesc).
//   - Each byte that is not part of valid UTF-8, each ASCII C0 control (U+0000-U+001F)
//     and DEL (U+007F) becomes \xNN (lower-case hex).
//   - Other deceptive characters become \u{XXXX} (upper-case hex): C1 controls
//     (U+0080-U+009F), format characters (Cf: bidi controls, zero-width, U+FEFF, soft
//     hyphen...), line and paragraph separators (Zl, Zp), spaces other than U+0020
//     (Zs), private use (Co), unassigned (Cn) and lone surrogates (Cs).
//   - A backslash is doubled when the next character is x, u, a backslash, or a
//     character that is itself escaped; otherwise it stays single, so Windows paths
//     stay readable.
// The result is plain text: the views put it in the page as text nodes, never as HTML.

const deceptive = /[\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}\p{Cs}]|[\u0080-\u009f]|(?! )\p{Zs}/u;

function hex(n, width) {
  return n.toString(16).padStart(width, '0');
}

// escapeOf returns the escape for the character ch, or null if it shows as itself.
function escapeOf(ch) {
  const c = ch.codePointAt(0);
  if (c < 0x20 || c === 0x7f) return '\\x' + hex(c, 2);
  if (deceptive.test(ch)) return '\\u{' + hex(c, 4).toUpperCase() + '}';
  return null;
}

// join applies the backslash rule to a list of [character, escape or null].
function join(toks) {
  let out = '';
  for (let i = 0; i < toks.length; i++) {
    const [ch, e] = toks[i];
    if (ch === '\\' && e === null) {
      const next = toks[i + 1];
      const double = next !== undefined && (next[1] !== null || next[0] === 'x' || next[0] === 'u' || next[0] === '\\');
      out += double ? '\\\\' : '\\';
    } else {
      out += e === null ? ch : e;
    }
  }
  return out;
}

// plain is text that shows as itself: printable ASCII without a backslash.
const plain = /^[\x20-\x5b\x5d-\x7e]*$/;

export function esc(s) {
  if (s === undefined || s === null) return '';
  if (plain.test(s)) return String(s);
  // By code point; a lone surrogate stays a single unit (and is escaped).
  return join(Array.from(String(s), (ch) => [ch, escapeOf(ch)]));
}

// escBytes is esc for raw bytes (a Uint8Array): valid UTF-8 sequences are characters,
// every other byte is shown as \xNN.
export function escBytes(b) {
  const toks = [];
  for (let i = 0; i < b.length;) {
    const x = b[i];
    let n = 0, c = 0, min = 0;
    if (x < 0x80) { n = 1; c = x; }
    else if (x >= 0xc2 && x <= 0xdf) { n = 2; c = x & 0x1f; min = 0x80; }
    else if (x >= 0xe0 && x <= 0xef) { n = 3; c = x & 0x0f; min = 0x800; }
    else if (x >= 0xf0 && x <= 0xf4) { n = 4; c = x & 0x07; min = 0x10000; }
    let ok = n > 0 && i + n <= b.length;
    for (let k = 1; ok && k < n; k++) {
      if ((b[i + k] & 0xc0) !== 0x80) ok = false;
      else c = (c << 6) | (b[i + k] & 0x3f);
    }
    if (ok && (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))) ok = false;
    if (!ok) {
      toks.push(['', '\\x' + hex(x, 2)]);
      i++;
      continue;
    }
    const ch = String.fromCodePoint(c);
    toks.push([ch, escapeOf(ch)]);
    i += n;
  }
  return join(toks);
}

// field shows text field name of an API record (a prompt or a connection): from its
// exact bytes when the API sends them ("raw": {name: base64}, for text that is not
// valid UTF-8), else from the JSON string.
export function field(o, name) {
  const raw = o && o.raw && o.raw[name];
  if (typeof raw === 'string') {
    try {
      return escBytes(Uint8Array.from(atob(raw), (ch) => ch.charCodeAt(0)));
    } catch (e) { /* not base64: fall back to the string */ }
  }
  return esc(o ? o[name] : '');
}
