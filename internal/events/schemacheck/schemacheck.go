// Package schemacheck validates latch.event/1 documents against the JSON Schema kept in
// the repository (docs/latch.event.schema.json). Tests use it; formats (date-time,
// ipv4, ipv6) are asserted, not just annotated.
package schemacheck

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// SchemaPath is the schema file in this source tree.
func SchemaPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "docs", "latch.event.schema.json")
}

// Validator checks documents against the schema.
type Validator struct{ sch *jsonschema.Schema }

// New compiles the schema at path.
func New(path string) (*Validator, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", path, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("latch.event.schema.json", doc); err != nil {
		return nil, fmt.Errorf("schema %s: %w", path, err)
	}
	sch, err := c.Compile("latch.event.schema.json")
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", path, err)
	}
	return &Validator{sch}, nil
}

// Validate checks one JSON document (one line of the stream).
func (v *Validator) Validate(line []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(line))
	if err != nil {
		return fmt.Errorf("not JSON: %w: %q", err, line)
	}
	if err := v.sch.Validate(inst); err != nil {
		return fmt.Errorf("%q: %v", line, err)
	}
	return nil
}
