package linux

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// eventPair is a datagram socket pair standing in for the conntrack event socket:
// what is written to w is read from r as the kernel's events are.
func eventPair(tb testing.TB) (w, r int) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	return fds[0], fds[1]
}

// TestCtEventDrainReadsEveryEvent: a drain reads every queued event, in order, across
// several of its batched reads, skips what is not a TCP or UDP conntrack event,
// counts what does not decode, and says so when a datagram did not fit its slot.
func TestCtEventDrainReadsEveryEvent(t *testing.T) {
	w, r := eventPair(t)
	destroy := uint16(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtDelete)
	update := uint16(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtNew)
	const n = 3*ctEventSlots + 5
	sent := 0
	for i := range n {
		src := netip.AddrPortFrom(tcpSrc.Addr(), uint16(10000+i))
		typ := destroy
		if i%2 == 1 {
			typ = update
		}
		var msg []byte
		switch i % 50 {
		case 7:
			msg = nlMsg(typ, ctMsg(src, tcpDst, 1, MarkAllow, 0, 0, 0)) // ICMP: skipped
		case 9:
			msg = nlMsg(typ, []byte{1, 2}) // does not decode
		default:
			msg = nlMsg(typ, ctMsg(src, tcpDst, 6, MarkAllow, ctTCPClose, 100, uint64(i)))
			sent++
		}
		if _, err := unix.Write(w, msg); err != nil {
			t.Fatalf("write event %d: %v", i, err)
		}
	}
	rd := &ctEventReader{fd: r}
	var got []ctEvent
	lost, bad, err := rd.drain(func(ev ctEvent) { got = append(got, ev) })
	if err != nil || lost {
		t.Fatalf("drain: lost %v, err %v", lost, err)
	}
	if bad != 4 {
		t.Errorf("%d messages did not decode, want 4", bad)
	}
	if len(got) != sent {
		t.Fatalf("drain read %d events, want %d", len(got), sent)
	}
	last := -1
	for _, ev := range got {
		i := int(ev.key.src().Port()) - 10000
		if i <= last || ev.destroy != (i%2 == 0) || ev.replBytes != uint64(i) {
			t.Fatalf("event %d after %d: %+v", i, last, ev)
		}
		last = i
	}
	// Nothing left, nothing read twice.
	lost, bad, err = rd.drain(func(ev ctEvent) { t.Errorf("read again: %+v", ev) })
	if lost || bad != 0 || err != nil {
		t.Errorf("second drain: lost %v, bad %d, err %v", lost, bad, err)
	}
	// A datagram larger than a slot is cut: lost, said so, and the next one read.
	big := nlMsg(destroy, append(ctMsg(tcpSrc, tcpDst, 6, MarkAllow, 0, 1, 2), make([]byte, ctEventSlotSize)...))
	unix.Write(w, big)
	unix.Write(w, nlMsg(destroy, ctMsg(tcpSrc, tcpDst, 6, MarkAllow, 0, 1, 2)))
	got = got[:0]
	lost, _, err = rd.drain(func(ev ctEvent) { got = append(got, ev) })
	if !lost || err != nil || len(got) != 1 {
		t.Errorf("after a datagram too large: lost %v, err %v, %d events (want lost, 1 event)", lost, err, len(got))
	}
}

// BenchmarkCtEventDrain measures what reading and decoding one conntrack event
// costs the accountant (events written to a socket pair in batches of 256, then
// drained).
func BenchmarkCtEventDrain(b *testing.B) {
	w, r := eventPair(b)
	const batch = 256
	msgs := make([][]byte, batch)
	for i := range msgs {
		msgs[i] = nlMsg(unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete,
			ctMsg(netip.AddrPortFrom(tcpSrc.Addr(), uint16(10000+i)), tcpDst, 6, MarkAllow, ctTCPClose, 100, 200))
	}
	rd := &ctEventReader{fd: r}
	events := 0
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		b.StopTimer()
		for _, m := range msgs {
			if _, err := unix.Write(w, m); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		if _, _, err := rd.drain(func(ctEvent) { events++ }); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if events < b.N {
		b.Fatalf("%d events read, want %d", events, b.N)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}
