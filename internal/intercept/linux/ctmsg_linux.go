package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ctnetlink attribute types (linux/netfilter/nfnetlink_conntrack.h) the byte
// accountant reads.
const (
	ctaTupleOrig      = 1
	ctaProtoinfo      = 4
	ctaMark           = 8
	ctaCountersOrig   = 9
	ctaCountersReply  = 10
	ctaTupleIP        = 1
	ctaTupleProto     = 2
	ctaIPv4Src        = 1
	ctaIPv4Dst        = 2
	ctaIPv6Src        = 3
	ctaIPv6Dst        = 4
	ctaProtoNum       = 1
	ctaProtoSrcPort   = 2
	ctaProtoDstPort   = 3
	ctaProtoinfoTCP   = 1
	ctaProtoinfoState = 1
	ctaCountersBytes  = 2
)

// nlaTypeMask takes NLA_F_NESTED and NLA_F_NET_BYTEORDER off an attribute type.
const nlaTypeMask = 0x3fff

// ctInfo is what the accountant needs of one conntrack entry.
type ctInfo struct {
	key       flowKey
	mark      uint32
	tcpState  uint8 // 0 when not TCP or not given
	hasState  bool
	origBytes uint64 // sent by the side that opened the flow
	replBytes uint64
	counters  bool // the message carried counters
}

// errCtShort is wrapped by parse errors of truncated messages.
var errCtShort = errors.New("truncated")

// eachAttr calls fn for each netlink attribute in b (type without its flag bits).
func eachAttr(b []byte, fn func(typ uint16, val []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("attribute header of %d bytes: %w", len(b), errCtShort)
		}
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute type %d length %d with %d bytes left: %w", typ, l, len(b), errCtShort)
		}
		if err := fn(typ, b[4:l]); err != nil {
			return err
		}
		al := (l + 3) &^ 3
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return nil
}

// parseCtMsg decodes the payload of a ctnetlink message (after the netlink header:
// the nfgenmsg, then attributes). A message without an original tuple is an error.
func parseCtMsg(b []byte) (ctInfo, error) {
	var ci ctInfo
	if len(b) < 4 {
		return ci, fmt.Errorf("ctnetlink message of %d bytes: %w", len(b), errCtShort)
	}
	var src, dst netip.Addr
	var sport, dport uint16
	haveTuple := false
	err := eachAttr(b[4:], func(typ uint16, v []byte) error {
		switch typ {
		case ctaTupleOrig:
			haveTuple = true
			return eachAttr(v, func(typ uint16, v []byte) error {
				switch typ {
				case ctaTupleIP:
					return eachAttr(v, func(typ uint16, v []byte) error {
						var a netip.Addr
						var ok bool
						switch typ {
						case ctaIPv4Src, ctaIPv4Dst:
							if len(v) != 4 {
								return fmt.Errorf("IPv4 address of %d bytes", len(v))
							}
							a, ok = netip.AddrFromSlice(v)
						case ctaIPv6Src, ctaIPv6Dst:
							if len(v) != 16 {
								return fmt.Errorf("IPv6 address of %d bytes", len(v))
							}
							a, ok = netip.AddrFromSlice(v)
						default:
							return nil
						}
						if !ok {
							return fmt.Errorf("address %x", v)
						}
						if typ == ctaIPv4Src || typ == ctaIPv6Src {
							src = a
						} else {
							dst = a
						}
						return nil
					})
				case ctaTupleProto:
					return eachAttr(v, func(typ uint16, v []byte) error {
						switch typ {
						case ctaProtoNum:
							if len(v) < 1 {
								return fmt.Errorf("protocol number of %d bytes", len(v))
							}
							ci.key.proto = v[0]
						case ctaProtoSrcPort, ctaProtoDstPort:
							if len(v) < 2 {
								return fmt.Errorf("port of %d bytes", len(v))
							}
							if typ == ctaProtoSrcPort {
								sport = binary.BigEndian.Uint16(v)
							} else {
								dport = binary.BigEndian.Uint16(v)
							}
						}
						return nil
					})
				}
				return nil
			})
		case ctaProtoinfo:
			return eachAttr(v, func(typ uint16, v []byte) error {
				if typ != ctaProtoinfoTCP {
					return nil
				}
				return eachAttr(v, func(typ uint16, v []byte) error {
					if typ == ctaProtoinfoState && len(v) >= 1 {
						ci.tcpState, ci.hasState = v[0], true
					}
					return nil
				})
			})
		case ctaMark:
			if len(v) < 4 {
				return fmt.Errorf("mark of %d bytes", len(v))
			}
			ci.mark = binary.BigEndian.Uint32(v)
		case ctaCountersOrig, ctaCountersReply:
			return eachAttr(v, func(t uint16, v []byte) error {
				if t != ctaCountersBytes {
					return nil
				}
				var n uint64
				switch len(v) {
				case 8:
					n = binary.BigEndian.Uint64(v)
				case 4:
					n = uint64(binary.BigEndian.Uint32(v))
				default:
					return fmt.Errorf("byte counter of %d bytes", len(v))
				}
				ci.counters = true
				if typ == ctaCountersOrig {
					ci.origBytes = n
				} else {
					ci.replBytes = n
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return ctInfo{}, fmt.Errorf("ctnetlink message: %w", err)
	}
	if !haveTuple || !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return ctInfo{}, errors.New("ctnetlink message: no complete original tuple")
	}
	if ci.key.proto != unix.IPPROTO_TCP && ci.key.proto != unix.IPPROTO_UDP {
		sport, dport = 0, 0
	}
	ci.key = newFlowKey(ci.key.proto, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport))
	return ci, nil
}
