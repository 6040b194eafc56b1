// Package strictjson reads a JSON object strictly, for input latch must not guess
// about (rules, rules files, API requests): exactly one object, every key known and
// spelt exactly (encoding/json would take "Action" for "action"), no key twice (where
// encoding/json would let the last one win), nothing after it.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Object splits data, which must be one JSON object, into its members. allowed lists
// the keys it may have, exactly as spelt. The error says what is wrong and where: not
// an object, malformed JSON (with its offset), an unknown or misspelt key, a key given
// twice, data after the object.
func Object(data []byte, allowed ...string) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	err := Members(data, allowed, func(key string, dec *json.Decoder) error {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		out[key] = raw
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Members checks data as Object does, but hands each member's value to fn as it
// comes, in the order of the data, without keeping it: fn reads exactly one value
// from dec (a large list can then be read item by item). An error from fn stops the
// walk and is returned as it is, unless it is a JSON syntax error, which gets its
// position.
func Members(data []byte, allowed []string, fn func(key string, dec *json.Decoder) error) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return errors.New("empty: want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return describe(data, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("want a JSON object, got %s", kind(tok))
	}
	seen := make(map[string]bool, len(allowed))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return describe(data, err)
		}
		key, _ := tok.(string)
		if !slices.Contains(allowed, key) {
			for _, a := range allowed {
				if strings.EqualFold(a, key) {
					return fmt.Errorf("unknown field %q (did you mean %q? names are lower case)", key, a)
				}
			}
			return fmt.Errorf("unknown field %q (want %s)", key, strings.Join(allowed, ", "))
		}
		if seen[key] {
			return fmt.Errorf("field %q given twice", key)
		}
		seen[key] = true
		if err := fn(key, dec); err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) {
				return describe(data, err)
			}
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return describe(data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the JSON object at offset %d", dec.InputOffset())
	}
	return nil
}

// Kind names the JSON value a token starts ("an array", "null", ...), for errors.
func Kind(tok json.Token) string { return kind(tok) }

// IsNull reports whether a member's value is JSON null.
func IsNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// String reads a member that must be a JSON string.
func String(raw json.RawMessage) (string, error) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", fmt.Errorf("want a JSON string, got %s", Describe(raw))
	}
	return s, nil
}

// Describe shows a value in an error message: short values whole, long ones cut.
func Describe(raw json.RawMessage) string {
	const max = 40
	s := string(bytes.TrimSpace(raw))
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

func kind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		if v == '{' {
			return "an object"
		}
	case string:
		return "a string"
	case float64, json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprint(tok)
}

// describe adds the line, column and offset to a syntax error.
func describe(data []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := 1, 1
		for _, c := range data[:min(int(se.Offset), len(data))] {
			if c == '\n' {
				line, col = line+1, 1
			} else {
				col++
			}
		}
		return fmt.Errorf("malformed JSON at line %d column %d (offset %d): %w", line, col, se.Offset, se)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errors.New("malformed JSON: unexpected EOF (the data ends too early)")
	}
	return fmt.Errorf("malformed JSON: %v", err)
}
