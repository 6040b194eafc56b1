package proto

import "testing"

// BenchmarkDecodeConnectRequest decodes the connect_v4 golden message; the baseline
// in the same run is BenchmarkDecodeHeader, which only checks the header.
func BenchmarkDecodeConnectRequest(b *testing.B) {
	msg, err := Encode(golden[2].msg)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeHeader(b *testing.B) {
	msg, err := Encode(golden[2].msg)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := DecodeHeader(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeVerdict encodes (and, as Encode always does, re-checks) a VERDICT.
func BenchmarkEncodeVerdict(b *testing.B) {
	v := golden[4].msg
	buf := make([]byte, 0, VerdictSize)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = v.AppendBinary(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
