// esc shows a string from outside (a path, a name, a host, a command line) so that
// nothing in it can deceive: the same rule as latch's command line (Go package
// internal/textesc).
//   - ASCII C0 controls (U+0000-U+001F) and DEL (U+007F) become \xNN (lower-case hex);
//     so does a byte of invalid UTF-8 where one survives (a lone surrogate here).
//   - Other deceptive characters become \u{XXXX} (upper-case hex): C1 controls
//     (U+0080-U+009F), format characters (Cf: bidi controls, zero-width, U+FEFF, soft
//     hyphen...), line and paragraph separators (Zl, Zp), spaces other than U+0020
//     (Zs), private use (Co), unassigned (Cn) and lone surrogates (Cs).
//   - A backslash is doubled when the next character is x, u, a backslash, or a
//     character that is itself escaped; otherwise it stays single, so Windows paths
//     stay readable.
// The result is plain text: put it in the page as a text node, never as HTML.

const deceptive = /[\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}\p{Cs}]|[\u0080-\u009f]|(?! )\p{Zs}/u;

function hex(n, width) {
  return n.toString(16).padStart(width, '0');
}

// escapeOf returns the escape for the code point c, or null if it shows as itself.
function escapeOf(ch) {
  const c = ch.codePointAt(0);
  if (c < 0x20 || c === 0x7f) return '\\x' + hex(c, 2);
  if (deceptive.test(ch)) return '\\u{' + hex(c, 4).toUpperCase() + '}';
  return null;
}

export function esc(s) {
  if (s === undefined || s === null) return '';
  s = String(s);
  const chars = Array.from(s); // by code point; lone surrogates stay single units
  let out = '';
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i];
    if (ch === '\\') {
      const next = chars[i + 1];
      const double = next !== undefined && (next === 'x' || next === 'u' || next === '\\' || escapeOf(next) !== null);
      out += double ? '\\\\' : '\\';
      continue;
    }
    const e = escapeOf(ch);
    out += e === null ? ch : e;
  }
  return out;
}
