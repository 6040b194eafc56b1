//go:build linux

package api

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

func TestModeAPI(t *testing.T) {
	f := newFixture(t)
	st, err := f.client.SetMode(ctx(t), ModeRequest{Mode: "learn"})
	if err != nil || st.Mode != engine.ModeLearn || f.eng.Mode() != engine.ModeLearn {
		t.Fatalf("set learn: %+v %v", st, err)
	}
	if v := <-f.request("/usr/bin/curl", 443); v.Action != engine.Allow || v.Reason != engine.ReasonMode {
		t.Errorf("learn verdict %+v", v)
	}
	st, err = f.client.SetMode(ctx(t), ModeRequest{Mode: "silent-allow", For: "10m"})
	if err != nil || st.Mode != engine.ModeSilentAllow || st.Then != engine.ModeLearn || st.Until.IsZero() {
		t.Fatalf("pause: %+v %v", st, err)
	}
	// A second timed mode returns to the mode before the first, not to the first.
	st, _ = f.client.SetMode(ctx(t), ModeRequest{Mode: "silent-deny", For: "1h"})
	if st.Then != engine.ModeLearn {
		t.Errorf("nested timed mode returns to %v, want learn", st.Then)
	}
	full, err := f.client.Status(ctx(t))
	if err != nil || full.DecisionMode == nil || full.DecisionMode.Mode != engine.ModeSilentDeny {
		t.Errorf("status decision_mode %+v %v", full.DecisionMode, err)
	}
	before := f.eng.ModeState()
	for _, body := range []string{
		`{}`, `{"mode":"Learn"}`, `{"mode":"learn","for":"0s"}`, `{"mode":"learn","for":"soon"}`,
		`{"mode":"learn","mode":"ask"}`, `{"mode":"learn","until":"x"}`, `{"mode":null}`, `{"mode":1}`, `[]`,
	} {
		resp, err := f.client.send(ctx(t), "POST", "/v1/mode", []byte(body))
		var ae *Error
		if err == nil {
			resp.Body.Close()
			t.Errorf("POST /v1/mode %s accepted", body)
		} else if !errors.As(err, &ae) || ae.StatusCode != http.StatusBadRequest || !strings.Contains(ae.Message, "mode") {
			t.Errorf("POST /v1/mode %s: %v", body, err)
		}
	}
	if f.eng.ModeState() != before {
		t.Errorf("refused requests changed the mode: %+v", f.eng.ModeState())
	}
}

func TestSuggestionsAPI(t *testing.T) {
	f := newFixture(t)
	f.eng.SetMode(engine.ModeState{Mode: engine.ModeLearn})
	<-f.request("/usr/bin/curl", 443)
	<-f.request("/usr/bin/wget", 80)
	ss, stats, err := f.client.Suggestions(ctx(t))
	if err != nil || len(ss) != 2 || stats.Kept != 2 || ss[0].Rule.App != "/usr/bin/curl" {
		t.Fatalf("suggestions %+v %+v %v", ss, stats, err)
	}
	for _, body := range []string{`{}`, `{"ids":[1],"all":true}`, `{"ids":[99]}`, `{"idz":[1]}`} {
		resp, err := f.client.send(ctx(t), "POST", "/v1/suggestions/accept", []byte(body))
		if err == nil {
			resp.Body.Close()
			t.Errorf("accept %s: accepted", body)
		}
	}
	if len(f.eng.Rules()) != 0 {
		t.Fatal("a refused accept added rules")
	}
	added, err := f.client.AcceptSuggestions(ctx(t), []engine.SuggestionID{ss[1].ID}, false)
	if err != nil || len(added) != 1 || added[0].App != "/usr/bin/wget" {
		t.Fatalf("accept: %+v %v", added, err)
	}
	// The rule was saved like any other.
	if data, err := f.client.ExportRules(ctx(t)); err != nil || !strings.Contains(string(data), "/usr/bin/wget") {
		t.Errorf("export after accept: %s %v", data, err)
	}
}
