package nfq

import (
	"encoding/binary"
	"errors"
	"testing"
)

// message builds an NFQNL_MSG_PACKET body: nfgenmsg and the given attributes.
func message(attrs ...[]byte) []byte {
	b := []byte{2, 0, 0x10, 0x92}
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func attr(typ uint16, v []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestParsePacketMessage(t *testing.T) {
	hdr := binary.BigEndian.AppendUint32(nil, 77)
	hdr = binary.BigEndian.AppendUint16(hdr, 0x0800)
	hdr = append(hdr, 3)
	payload := []byte{0x45, 1, 2, 3, 4}
	p, err := parsePacket(message(
		attr(attrPacketHdr, hdr),
		attr(attrMark, be32(0x10000001)),
		attr(attrUID, be32(1000)),
		attr(attrGID, be32(100)),
		attr(attrPayload, payload),
		attr(11|0x8000, []byte{1, 2, 3, 4}), // nested NFQA_CT: ignored
	))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != 77 || p.HWProto != 0x0800 || p.Hook != 3 || p.Mark != 0x10000001 || !p.HasUID || p.UID != 1000 || p.GID != 100 || string(p.Payload) != string(payload) {
		t.Errorf("parsePacket = %+v", p)
	}
}

func TestParsePacketMalformed(t *testing.T) {
	hdr := attr(attrPacketHdr, []byte{0, 0, 0, 9, 8, 0, 3})
	for name, in := range map[string][]byte{
		"short nfgenmsg":   {2, 0},
		"no packet header": message(attr(attrMark, be32(1))),
		"short header":     message(attr(attrPacketHdr, []byte{1, 2, 3})),
		"attr beyond":      append(message(hdr), 200, 0, 10, 0),
		"attr length 2":    append(message(hdr), 2, 0, 10, 0),
		"truncated attr":   append(message(hdr), 8, 0),
		"mark of 3 bytes":  message(hdr, attr(attrMark, []byte{1, 2, 3})),
		"uid of 8 bytes":   message(hdr, attr(attrUID, make([]byte, 8))),
	} {
		_, err := parsePacket(in)
		var me *MalformedError
		if !errors.As(err, &me) {
			t.Errorf("%s: err = %v, want a *MalformedError", name, err)
		}
	}
}

// FuzzParsePacketMessage: no kernel message crashes the decoder, and whatever it
// accepts has a packet id and a payload inside the message.
func FuzzParsePacketMessage(f *testing.F) {
	hdr := attr(attrPacketHdr, []byte{0, 0, 0, 9, 8, 0, 3})
	f.Add(message(hdr, attr(attrPayload, []byte{0x45, 0, 0, 20})))
	f.Add(message(hdr, attr(attrMark, be32(1)), attr(attrUID, be32(0))))
	f.Add(message(attr(attrMark, be32(1))))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePacket(b)
		if err != nil {
			var me *MalformedError
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not a *MalformedError", err)
			}
			return
		}
		if !p.hasID {
			t.Fatal("accepted a message without a packet header")
		}
		if len(p.Payload) > len(b) {
			t.Fatalf("payload of %d bytes from a %d-byte message", len(p.Payload), len(b))
		}
	})
}
