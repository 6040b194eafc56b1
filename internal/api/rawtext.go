package api

import (
	"encoding/json"
	"unicode/utf8"
)

// RawText carries the exact bytes of a record's text fields that are not valid UTF-8,
// by field name ("exe", "user", "cmdline", "host", "container_name"). A JSON string holds Unicode text:
// encoding/json writes each byte that is not valid UTF-8 as U+FFFD, so a path such as
// "/tmp/a\xff" would reach clients as "/tmp/a\ufffd", the same as "/tmp/a\xfe". In
// JSON the exact bytes are base64 ("raw": {"exe": "L3RtcC9h/w=="}); the key is absent
// when every field is valid UTF-8. Prompt and Conn fill it when marshalled and put the
// bytes back when unmarshalled, so Go clients always see the exact text.
type RawText map[string][]byte

// rawOf returns the RawText of fields, nil if every one is valid UTF-8.
func rawOf(fields map[string]*string) RawText {
	var raw RawText
	for name, s := range fields {
		if !utf8.ValidString(*s) {
			if raw == nil {
				raw = RawText{}
			}
			raw[name] = []byte(*s)
		}
	}
	return raw
}

// restore puts the exact bytes back into fields. Raw bytes are taken only where they
// are what the field's text stands for (the same, with U+FFFD for each byte that is
// not UTF-8): raw can restore what JSON could not carry, never say something else.
func (raw RawText) restore(fields map[string]*string) {
	for name, b := range raw {
		if s, ok := fields[name]; ok && !utf8.Valid(b) && asJSONText(b) == *s {
			*s = string(b)
		}
	}
}

// asJSONText is b as a JSON string carries it: each byte that is not valid UTF-8
// becomes U+FFFD, as encoding/json writes it.
func asJSONText(b []byte) string {
	out := make([]rune, 0, len(b))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		out = append(out, r)
		b = b[n:]
	}
	return string(out)
}

func (p *Prompt) textFields() map[string]*string {
	return map[string]*string{"exe": &p.Exe, "user": &p.User, "cmdline": &p.Cmdline, "host": &p.Host, "container_name": &p.ContainerName}
}

func (c *Conn) textFields() map[string]*string {
	return map[string]*string{"exe": &c.Exe, "user": &c.User, "cmdline": &c.Cmdline, "host": &c.Host, "container_name": &c.ContainerName}
}

// MarshalJSON writes p with Raw holding the exact bytes of fields that are not UTF-8.
func (p Prompt) MarshalJSON() ([]byte, error) {
	type plain Prompt
	p.Raw = rawOf(p.textFields())
	return json.Marshal(plain(p))
}

// UnmarshalJSON reads p and puts back the exact bytes Raw carries.
func (p *Prompt) UnmarshalJSON(b []byte) error {
	type plain Prompt
	if err := json.Unmarshal(b, (*plain)(p)); err != nil {
		return err
	}
	p.Raw.restore(p.textFields())
	return nil
}

// MarshalJSON writes c with Raw holding the exact bytes of fields that are not UTF-8.
func (c Conn) MarshalJSON() ([]byte, error) {
	type plain Conn
	c.Raw = rawOf(c.textFields())
	return json.Marshal(plain(c))
}

// UnmarshalJSON reads c and puts back the exact bytes Raw carries.
func (c *Conn) UnmarshalJSON(b []byte) error {
	type plain Conn
	if err := json.Unmarshal(b, (*plain)(c)); err != nil {
		return err
	}
	c.Raw.restore(c.textFields())
	return nil
}
