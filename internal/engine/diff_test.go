package engine

import (
	"testing"
	"time"
)

func TestDiffAndMergeRules(t *testing.T) {
	r := func(id RuleID, port uint16, a Action) Rule {
		return Rule{ID: id, Direction: Outbound, Protocol: TCP, Port: PortRange{port, port}, Action: a}
	}
	old := []Rule{r(1, 22, Allow), r(2, 25, Deny), r(3, 80, Allow)}
	next := []Rule{r(1, 22, Allow), r(2, 25, Allow), r(0, 443, Allow), r(9, 53, Allow)}
	d := DiffRules(old, next)
	if len(d.Added) != 2 || len(d.Removed) != 1 || d.Removed[0].ID != 3 || len(d.Changed) != 1 || d.Changed[0].New.Action != Allow || d.Changed[0].Old.Action != Deny {
		t.Fatalf("diff %+v", d)
	}
	if d := DiffRules(old, old); len(d.Added)+len(d.Removed)+len(d.Changed) != 0 {
		t.Fatalf("diff of a set with itself: %+v", d)
	}
	// Merge: what is there already (other ID, other creation time) is not added twice.
	dup := r(7, 25, Deny)
	dup.Created = time.Now()
	m := MergeRules(old, []Rule{dup, r(8, 8080, Allow)})
	if len(m) != 4 || m[3].ID != 0 || m[3].Port.Lo != 8080 {
		t.Fatalf("merge %+v", m)
	}
}
