package proto

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
	"unicode/utf16"
)

// Action is what the driver does with a held connection.
type Action uint32

// Actions. Reject blocks too; at the ALE layers the connect already fails locally at once.
const (
	ActionPermit Action = 1
	ActionBlock  Action = 2
	ActionReject Action = 3
)

// String returns "permit", "block", "reject" or the number.
func (a Action) String() string {
	switch a {
	case ActionPermit:
		return "permit"
	case ActionBlock:
		return "block"
	case ActionReject:
		return "reject"
	}
	return fmt.Sprintf("action(%d)", uint32(a))
}

// CacheScope says which later connections the driver may decide from a cached verdict.
type CacheScope uint32

// Cache scopes.
const (
	// CacheNone: this connection only.
	CacheNone CacheScope = 0
	// CacheProcessRemotePort: same process, remote address, remote port and protocol.
	CacheProcessRemotePort CacheScope = 1
	// CachePathRemote: same process path, remote address and protocol, any port.
	CachePathRemote CacheScope = 2
)

// String returns a short name of the scope.
func (s CacheScope) String() string {
	switch s {
	case CacheNone:
		return "none"
	case CacheProcessRemotePort:
		return "process+remote+port"
	case CachePathRemote:
		return "path+remote"
	}
	return fmt.Sprintf("scope(%d)", uint32(s))
}

// Layer is the WFP layer a connection was held at.
type Layer uint16

// Layers.
const (
	LayerConnectV4    Layer = 1 // FWPM_LAYER_ALE_AUTH_CONNECT_V4
	LayerConnectV6    Layer = 2 // FWPM_LAYER_ALE_AUTH_CONNECT_V6
	LayerRecvAcceptV4 Layer = 3 // FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4
	LayerRecvAcceptV6 Layer = 4 // FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6
)

// String returns the WFP layer name without the FWPM_LAYER_ prefix.
func (l Layer) String() string {
	switch l {
	case LayerConnectV4:
		return "ALE_AUTH_CONNECT_V4"
	case LayerConnectV6:
		return "ALE_AUTH_CONNECT_V6"
	case LayerRecvAcceptV4:
		return "ALE_AUTH_RECV_ACCEPT_V4"
	case LayerRecvAcceptV6:
		return "ALE_AUTH_RECV_ACCEPT_V6"
	}
	return fmt.Sprintf("layer(%d)", uint16(l))
}

// Direction returns the direction connections at layer l have, or 0 for an unknown layer.
func (l Layer) Direction() Direction {
	switch l {
	case LayerConnectV4, LayerConnectV6:
		return Outbound
	case LayerRecvAcceptV4, LayerRecvAcceptV6:
		return Inbound
	}
	return 0
}

// IPVersion returns 4 or 6 for the layer, or 0 for an unknown layer.
func (l Layer) IPVersion() uint8 {
	switch l {
	case LayerConnectV4, LayerRecvAcceptV4:
		return 4
	case LayerConnectV6, LayerRecvAcceptV6:
		return 6
	}
	return 0
}

// RequestID names a connection the driver holds: nonzero, unique per driver load.
type RequestID uint64

// Direction says who opened a connection.
type Direction uint8

// Directions.
const (
	Outbound Direction = 1
	Inbound  Direction = 2
)

// String returns "outbound", "inbound" or the number.
func (d Direction) String() string {
	switch d {
	case Outbound:
		return "outbound"
	case Inbound:
		return "inbound"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// NTStatus is a Windows NTSTATUS value as the driver reports it.
type NTStatus uint32

// NTSTATUS values the protocol uses.
const (
	StatusSuccess              NTStatus = 0
	StatusInvalidParameter     NTStatus = 0xC000000D
	StatusNotFound             NTStatus = 0xC0000225
	StatusConnectionCountLimit NTStatus = 0xC0000246
	StatusRevisionMismatch     NTStatus = 0xC0000059
)

// String returns the NTSTATUS name for values the protocol uses, else the hex value.
func (s NTStatus) String() string {
	switch s {
	case StatusSuccess:
		return "STATUS_SUCCESS"
	case StatusInvalidParameter:
		return "STATUS_INVALID_PARAMETER"
	case StatusNotFound:
		return "STATUS_NOT_FOUND"
	case StatusConnectionCountLimit:
		return "STATUS_CONNECTION_COUNT_LIMIT"
	case StatusRevisionMismatch:
		return "STATUS_REVISION_MISMATCH"
	}
	return fmt.Sprintf("NTSTATUS 0x%08X", uint32(s))
}

// Hello is the service's first message after connecting: its version, the verdict
// the driver applies when nobody answers, and how long a connection may stay pended.
type Hello struct {
	ServiceVersion   uint32 // Version
	DefaultAction    Action // ActionPermit or ActionBlock
	PendingTimeoutMS uint32 // MinPendingTimeoutMS..MaxPendingTimeoutMS
}

// Type returns TypeHello.
func (*Hello) Type() Type { return TypeHello }

// AppendBinary implements Message.
func (m *Hello) AppendBinary(b []byte) ([]byte, error) {
	return appendChecked(b, func(b []byte) []byte {
		b = appendHeader(b, TypeHello, HelloSize)
		b = le.AppendUint32(b, m.ServiceVersion)
		b = le.AppendUint32(b, uint32(m.DefaultAction))
		b = le.AppendUint32(b, m.PendingTimeoutMS)
		return le.AppendUint32(b, 0)
	}, func(b []byte) error { return decodeAs(TypeHello, b, new(Hello).decodeBody) })
}

func (m *Hello) decodeBody(b []byte) error {
	m.ServiceVersion = le.Uint32(b[16:])
	m.DefaultAction = Action(le.Uint32(b[20:]))
	m.PendingTimeoutMS = le.Uint32(b[24:])
	if m.DefaultAction != ActionPermit && m.DefaultAction != ActionBlock {
		return &DecodeError{Type: TypeHello, Field: "default_action", Offset: 20,
			Reason: fmt.Sprintf("%d, want 1 (permit) or 2 (block)", uint32(m.DefaultAction))}
	}
	if m.PendingTimeoutMS < MinPendingTimeoutMS || m.PendingTimeoutMS > MaxPendingTimeoutMS {
		return &DecodeError{Type: TypeHello, Field: "pending_timeout_ms", Offset: 24,
			Reason: fmt.Sprintf("%d, want %d..%d", m.PendingTimeoutMS, MinPendingTimeoutMS, MaxPendingTimeoutMS)}
	}
	return reservedZero(TypeHello, b, 28, 4, "reserved")
}

// HelloReply is the driver's answer to Hello.
type HelloReply struct {
	DriverVersion        uint32
	MaxPending           uint32   // pending connections at most, in total
	MaxPendingPerProcess uint32   // pending connections at most, per process
	Status               NTStatus // StatusSuccess, else why the driver refused the service
}

// Type returns TypeHelloReply.
func (*HelloReply) Type() Type { return TypeHelloReply }

// AppendBinary implements Message.
func (m *HelloReply) AppendBinary(b []byte) ([]byte, error) {
	return appendChecked(b, func(b []byte) []byte {
		b = appendHeader(b, TypeHelloReply, HelloReplySize)
		b = le.AppendUint32(b, m.DriverVersion)
		b = le.AppendUint32(b, m.MaxPending)
		b = le.AppendUint32(b, m.MaxPendingPerProcess)
		return le.AppendUint32(b, uint32(m.Status))
	}, func(b []byte) error { return decodeAs(TypeHelloReply, b, new(HelloReply).decodeBody) })
}

func (m *HelloReply) decodeBody(b []byte) error {
	m.DriverVersion = le.Uint32(b[16:])
	m.MaxPending = le.Uint32(b[20:])
	m.MaxPendingPerProcess = le.Uint32(b[24:])
	m.Status = NTStatus(le.Uint32(b[28:]))
	return nil
}

// ConnectRequest is a connection the driver holds until the service sends a Verdict
// with the same RequestID.
type ConnectRequest struct {
	RequestID RequestID // nonzero, unique per driver load
	Layer     Layer
	Direction Direction // must agree with Layer
	IPVersion uint8     // 4 or 6, must agree with Layer
	Protocol  uint8     // IANA protocol number
	Local     netip.AddrPort
	Remote    netip.AddrPort
	ProcessID uint64 // 0: the metadata had none
	Timestamp uint64 // 100 ns intervals since 1601-01-01 UTC; see FileTimeToTime
	// Path is the process image path in NT form (\Device\HarddiskVolume3\...), as the
	// UTF-16 code units the driver sent (kept raw so that a name with an unpaired
	// surrogate survives); nil if the metadata had none. PathString decodes it.
	Path []uint16
}

// Type returns TypeConnectRequest.
func (*ConnectRequest) Type() Type { return TypeConnectRequest }

// PathString returns the process path as a Go string (unpaired surrogates become U+FFFD).
func (m *ConnectRequest) PathString() string { return string(utf16.Decode(m.Path)) }

// Time returns Timestamp as a time.Time.
func (m *ConnectRequest) Time() time.Time { return FileTimeToTime(m.Timestamp) }

// Size returns the encoded size of m in bytes.
func (m *ConnectRequest) Size() int { return ConnectRequestBaseSize + 2*len(m.Path) }

// EncodePath returns s as UTF-16 code units, for ConnectRequest.Path.
func EncodePath(s string) []uint16 { return utf16.Encode([]rune(s)) }

// fileTimeEpochDelta is the number of 100 ns intervals between 1601-01-01 and 1970-01-01.
const fileTimeEpochDelta = 116444736000000000

// FileTimeToTime converts a Windows FILETIME (100 ns intervals since 1601-01-01 UTC).
func FileTimeToTime(ft uint64) time.Time {
	const perSec = 10000000
	if ft > math.MaxInt64 {
		ft = math.MaxInt64
	}
	unix100 := int64(ft) - fileTimeEpochDelta
	return time.Unix(unix100/perSec, (unix100%perSec)*100).UTC()
}

// TimeToFileTime converts t to a Windows FILETIME; times before 1601 become 0.
func TimeToFileTime(t time.Time) uint64 {
	v := t.Unix()*10000000 + int64(t.Nanosecond())/100 + fileTimeEpochDelta
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// AppendBinary implements Message.
func (m *ConnectRequest) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Path) > MaxPathLen {
		return b, &DecodeError{Type: TypeConnectRequest, Field: "path_len", Offset: 88,
			Reason: fmt.Sprintf("%d code units, at most %d", len(m.Path), MaxPathLen)}
	}
	for _, f := range []struct {
		name string
		off  int
		ap   netip.AddrPort
	}{{"local_addr", 32, m.Local}, {"remote_addr", 48, m.Remote}} {
		a := f.ap.Addr()
		if (m.IPVersion == 4 && !a.Is4()) || (m.IPVersion == 6 && !a.Is6()) {
			return b, &DecodeError{Type: TypeConnectRequest, Field: f.name, Offset: f.off,
				Reason: fmt.Sprintf("address %v is not IPv%d", a, m.IPVersion)}
		}
	}
	return appendChecked(b, func(b []byte) []byte {
		b = appendHeader(b, TypeConnectRequest, m.Size())
		b = le.AppendUint64(b, uint64(m.RequestID))
		b = le.AppendUint16(b, uint16(m.Layer))
		b = append(b, byte(m.Direction), m.IPVersion, m.Protocol, 0, 0, 0)
		b = appendAddr(b, m.Local.Addr())
		b = appendAddr(b, m.Remote.Addr())
		b = le.AppendUint16(b, m.Local.Port())
		b = le.AppendUint16(b, m.Remote.Port())
		b = le.AppendUint32(b, 0)
		b = le.AppendUint64(b, m.ProcessID)
		b = le.AppendUint64(b, m.Timestamp)
		b = le.AppendUint16(b, uint16(len(m.Path)))
		b = append(b, 0, 0, 0, 0, 0, 0)
		for _, u := range m.Path {
			b = le.AppendUint16(b, u)
		}
		return b
	}, func(b []byte) error { return decodeAs(TypeConnectRequest, b, new(ConnectRequest).decodeBody) })
}

func appendAddr(b []byte, a netip.Addr) []byte {
	var raw [16]byte
	if a.Is4() {
		v4 := a.As4()
		copy(raw[:], v4[:])
	} else if a.Is6() {
		raw = a.As16()
	}
	return append(b, raw[:]...)
}

func (m *ConnectRequest) decodeBody(b []byte) error {
	const t = TypeConnectRequest
	m.RequestID = RequestID(le.Uint64(b[16:]))
	m.Layer = Layer(le.Uint16(b[24:]))
	m.Direction = Direction(b[26])
	m.IPVersion = b[27]
	m.Protocol = b[28]
	if m.RequestID == 0 {
		return &DecodeError{Type: t, Field: "request_id", Offset: 16, Reason: "0, want nonzero"}
	}
	if m.Layer.Direction() == 0 {
		return &DecodeError{Type: t, Field: "layer", Offset: 24, Reason: fmt.Sprintf("%d, want 1..4", uint16(m.Layer))}
	}
	if m.Direction != m.Layer.Direction() {
		return &DecodeError{Type: t, Field: "direction", Offset: 26,
			Reason: fmt.Sprintf("%d (%v), layer %v demands %d (%v)", uint8(m.Direction), m.Direction,
				m.Layer, uint8(m.Layer.Direction()), m.Layer.Direction())}
	}
	if m.IPVersion != m.Layer.IPVersion() {
		return &DecodeError{Type: t, Field: "ip_version", Offset: 27,
			Reason: fmt.Sprintf("%d, layer %v demands %d", m.IPVersion, m.Layer, m.Layer.IPVersion())}
	}
	if err := reservedZero(t, b, 29, 3, "reserved"); err != nil {
		return err
	}
	local, err := decodeAddr(b, 32, m.IPVersion, "local_addr")
	if err != nil {
		return err
	}
	remote, err := decodeAddr(b, 48, m.IPVersion, "remote_addr")
	if err != nil {
		return err
	}
	m.Local = netip.AddrPortFrom(local, le.Uint16(b[64:]))
	m.Remote = netip.AddrPortFrom(remote, le.Uint16(b[66:]))
	if err := reservedZero(t, b, 68, 4, "reserved"); err != nil {
		return err
	}
	m.ProcessID = le.Uint64(b[72:])
	m.Timestamp = le.Uint64(b[80:])
	n := int(le.Uint16(b[88:])) // DecodeHeader checked it against the length
	if err := reservedZero(t, b, 90, 6, "reserved"); err != nil {
		return err
	}
	m.Path = nil
	if n > 0 {
		m.Path = make([]uint16, n)
		for i := range m.Path {
			m.Path[i] = le.Uint16(b[ConnectRequestBaseSize+2*i:])
		}
	}
	return nil
}

func decodeAddr(b []byte, off int, ipVersion uint8, field string) (netip.Addr, error) {
	if ipVersion == 6 {
		return netip.AddrFrom16([16]byte(b[off : off+16])), nil
	}
	for i := off + 4; i < off+16; i++ {
		if b[i] != 0 {
			return netip.Addr{}, &DecodeError{Type: TypeConnectRequest, Field: field, Offset: i,
				Reason: fmt.Sprintf("byte 0x%02x after the IPv4 address, want 0", b[i])}
		}
	}
	return netip.AddrFrom4([4]byte(b[off : off+4])), nil
}

// Verdict tells the driver what to do with the connection RequestID names.
type Verdict struct {
	RequestID  RequestID // nonzero
	Action     Action    // ActionPermit, ActionBlock or ActionReject
	CacheScope CacheScope
	CacheTTLMS uint32 // 0 with CacheNone, 1..MaxCacheTTLMS otherwise
	// RuleTag is stored with the cached verdict and returned in the HIT_BATCH record of
	// every connection the cache decides (the service sends the rule id); 0 with CacheNone.
	RuleTag uint64
}

// Type returns TypeVerdict.
func (*Verdict) Type() Type { return TypeVerdict }

// AppendBinary implements Message.
func (m *Verdict) AppendBinary(b []byte) ([]byte, error) {
	return appendChecked(b, func(b []byte) []byte {
		b = appendHeader(b, TypeVerdict, VerdictSize)
		b = le.AppendUint64(b, uint64(m.RequestID))
		b = le.AppendUint32(b, uint32(m.Action))
		b = le.AppendUint32(b, uint32(m.CacheScope))
		b = le.AppendUint32(b, m.CacheTTLMS)
		b = le.AppendUint32(b, 0)
		return le.AppendUint64(b, m.RuleTag)
	}, func(b []byte) error { return decodeAs(TypeVerdict, b, new(Verdict).decodeBody) })
}

func (m *Verdict) decodeBody(b []byte) error {
	const t = TypeVerdict
	m.RequestID = RequestID(le.Uint64(b[16:]))
	m.Action = Action(le.Uint32(b[24:]))
	m.CacheScope = CacheScope(le.Uint32(b[28:]))
	m.CacheTTLMS = le.Uint32(b[32:])
	m.RuleTag = le.Uint64(b[40:])
	if m.RequestID == 0 {
		return &DecodeError{Type: t, Field: "request_id", Offset: 16, Reason: "0, want nonzero"}
	}
	if m.Action < ActionPermit || m.Action > ActionReject {
		return &DecodeError{Type: t, Field: "action", Offset: 24, Reason: fmt.Sprintf("%d, want 1..3", uint32(m.Action))}
	}
	if m.CacheScope > CachePathRemote {
		return &DecodeError{Type: t, Field: "cache_scope", Offset: 28, Reason: fmt.Sprintf("%d, want 0..2", uint32(m.CacheScope))}
	}
	if m.CacheScope == CacheNone && m.CacheTTLMS != 0 {
		return &DecodeError{Type: t, Field: "cache_ttl_ms", Offset: 32,
			Reason: fmt.Sprintf("%d with cache_scope 0, want 0", m.CacheTTLMS)}
	}
	if m.CacheScope != CacheNone && (m.CacheTTLMS == 0 || m.CacheTTLMS > MaxCacheTTLMS) {
		return &DecodeError{Type: t, Field: "cache_ttl_ms", Offset: 32,
			Reason: fmt.Sprintf("%d with cache_scope %d, want 1..%d", m.CacheTTLMS, uint32(m.CacheScope), MaxCacheTTLMS)}
	}
	if err := reservedZero(t, b, 36, 4, "reserved"); err != nil {
		return err
	}
	if m.CacheScope == CacheNone && m.RuleTag != 0 {
		return &DecodeError{Type: t, Field: "rule_tag", Offset: 40,
			Reason: fmt.Sprintf("%d with cache_scope 0, want 0 (a tag names a cached verdict's rule)", m.RuleTag)}
	}
	return nil
}

// FlushFlags say what a Flush does.
type FlushFlags uint32

// Flush flags.
const (
	FlushCache       FlushFlags = 1 << 0 // forget every cached verdict
	FlushReauthorize FlushFlags = 1 << 1 // re-authorize existing flows
	flushKnown                  = FlushCache | FlushReauthorize
)

// Flush asks the driver to forget cached verdicts and re-authorize existing flows.
type Flush struct {
	Flags FlushFlags
}

// Type returns TypeFlush.
func (*Flush) Type() Type { return TypeFlush }

// AppendBinary implements Message.
func (m *Flush) AppendBinary(b []byte) ([]byte, error) {
	return appendChecked(b, func(b []byte) []byte {
		b = appendHeader(b, TypeFlush, FlushSize)
		b = le.AppendUint32(b, uint32(m.Flags))
		return le.AppendUint32(b, 0)
	}, func(b []byte) error { return decodeAs(TypeFlush, b, new(Flush).decodeBody) })
}

func (m *Flush) decodeBody(b []byte) error {
	m.Flags = FlushFlags(le.Uint32(b[16:]))
	if m.Flags&^flushKnown != 0 {
		return &DecodeError{Type: TypeFlush, Field: "flags", Offset: 16,
			Reason: fmt.Sprintf("0x%x has unknown bits 0x%x", uint32(m.Flags), uint32(m.Flags&^flushKnown))}
	}
	return reservedZero(TypeFlush, b, 20, 4, "reserved")
}

// StatsQuery asks the driver for its counters; it answers with a StatsReply.
type StatsQuery struct{}

// Type returns TypeStatsQuery.
func (*StatsQuery) Type() Type { return TypeStatsQuery }

// AppendBinary implements Message.
func (m *StatsQuery) AppendBinary(b []byte) ([]byte, error) {
	return appendHeader(b, TypeStatsQuery, StatsQuerySize), nil
}

func (m *StatsQuery) decodeBody([]byte) error { return nil }

// StatsReply holds the driver's counters since it loaded.
type StatsReply struct {
	Classified        uint64
	Pended            uint64
	Permitted         uint64
	Blocked           uint64
	TimedOut          uint64
	NoClientDefault   uint64
	CapExceeded       uint64
	CacheHits         uint64
	SendFailures      uint64
	MalformedMessages uint64
	FlowContextsLive  uint64
	PendingNow        uint64
	VerdictsLate      uint64
	Reauthorized      uint64
	AllocFailures     uint64
	// HitsLost counts connections the verdict cache decided whose HIT_BATCH record
	// never reached the service (the driver's ring was full, the send failed, unload).
	HitsLost uint64
}

// statsCounters returns pointers to the counters in wire order.
func (m *StatsReply) counters() [16]*uint64 {
	return [16]*uint64{&m.Classified, &m.Pended, &m.Permitted, &m.Blocked, &m.TimedOut,
		&m.NoClientDefault, &m.CapExceeded, &m.CacheHits, &m.SendFailures, &m.MalformedMessages,
		&m.FlowContextsLive, &m.PendingNow, &m.VerdictsLate, &m.Reauthorized, &m.AllocFailures, &m.HitsLost}
}

// StatsNames are the counters' names as PROTOCOL.md gives them, in wire order.
var StatsNames = [16]string{"classified", "pended", "permitted", "blocked", "timed_out",
	"no_client_default", "cap_exceeded", "cache_hits", "send_failures", "malformed_messages",
	"flow_contexts_live", "pending_now", "verdicts_late", "reauthorized", "alloc_failures", "hits_lost"}

// Map returns the counters keyed by their StatsNames.
func (m *StatsReply) Map() map[string]uint64 {
	out := make(map[string]uint64, len(StatsNames))
	for i, p := range m.counters() {
		out[StatsNames[i]] = *p
	}
	return out
}

// Type returns TypeStatsReply.
func (*StatsReply) Type() Type { return TypeStatsReply }

// AppendBinary implements Message.
func (m *StatsReply) AppendBinary(b []byte) ([]byte, error) {
	b = appendHeader(b, TypeStatsReply, StatsReplySize)
	for _, p := range m.counters() {
		b = le.AppendUint64(b, *p)
	}
	return b, nil
}

func (m *StatsReply) decodeBody(b []byte) error {
	for i, p := range m.counters() {
		*p = le.Uint64(b[16+8*i:])
	}
	return nil
}

// Hit is one connection the driver's verdict cache decided (a HIT_BATCH record).
type Hit struct {
	RuleTag   uint64 // the cached VERDICT's rule_tag; 0: none
	ProcessID uint64
	Timestamp uint64 // 100 ns intervals since 1601-01-01 UTC, at the classify
	Direction Direction
	IPVersion uint8 // 4 or 6
	Protocol  uint8
	Action    Action // ActionPermit or ActionBlock
	Local     netip.AddrPort
	Remote    netip.AddrPort
}

// Time returns Timestamp as a time.Time.
func (h *Hit) Time() time.Time { return FileTimeToTime(h.Timestamp) }

// HitBatch carries 1..MaxHitsPerBatch connections the driver's verdict cache decided
// without asking, so that the service records them in its history.
type HitBatch struct {
	Hits []Hit
}

// Type returns TypeHitBatch.
func (*HitBatch) Type() Type { return TypeHitBatch }

// AppendBinary implements Message.
func (m *HitBatch) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Hits) < 1 || len(m.Hits) > MaxHitsPerBatch {
		return b, &DecodeError{Type: TypeHitBatch, Field: "count", Offset: 16,
			Reason: fmt.Sprintf("%d records, want 1..%d", len(m.Hits), MaxHitsPerBatch)}
	}
	for i, h := range m.Hits {
		base := HitBatchBaseSize + HitRecordSize*i
		for _, f := range []struct {
			name string
			off  int
			ap   netip.AddrPort
		}{{"local_addr", base + 24, h.Local}, {"remote_addr", base + 40, h.Remote}} {
			a := f.ap.Addr()
			if (h.IPVersion == 4 && !a.Is4()) || (h.IPVersion == 6 && !a.Is6()) {
				return b, &DecodeError{Type: TypeHitBatch, Field: f.name, Offset: f.off,
					Reason: fmt.Sprintf("address %v is not IPv%d", a, h.IPVersion)}
			}
		}
	}
	return appendChecked(b, func(b []byte) []byte {
		b = appendHeader(b, TypeHitBatch, HitBatchBaseSize+HitRecordSize*len(m.Hits))
		b = le.AppendUint32(b, uint32(len(m.Hits)))
		b = le.AppendUint32(b, 0)
		for _, h := range m.Hits {
			b = le.AppendUint64(b, h.RuleTag)
			b = le.AppendUint64(b, h.ProcessID)
			b = le.AppendUint64(b, h.Timestamp)
			b = appendAddr(b, h.Local.Addr())
			b = appendAddr(b, h.Remote.Addr())
			b = le.AppendUint16(b, h.Local.Port())
			b = le.AppendUint16(b, h.Remote.Port())
			b = append(b, byte(h.Direction), h.IPVersion, h.Protocol, byte(h.Action))
		}
		return b
	}, func(b []byte) error { return decodeAs(TypeHitBatch, b, new(HitBatch).decodeBody) })
}

func (m *HitBatch) decodeBody(b []byte) error {
	const t = TypeHitBatch
	n := int(le.Uint32(b[16:]))
	if n < 1 || n > MaxHitsPerBatch || len(b) != HitBatchBaseSize+HitRecordSize*n {
		return &DecodeError{Type: t, Field: "count", Offset: 16,
			Reason: fmt.Sprintf("%d records in a %d-byte message", n, len(b))}
	}
	if err := reservedZero(t, b, 20, 4, "reserved"); err != nil {
		return err
	}
	m.Hits = make([]Hit, n)
	for i := range m.Hits {
		base := HitBatchBaseSize + HitRecordSize*i
		r := b[base : base+HitRecordSize]
		h := Hit{RuleTag: le.Uint64(r[0:]), ProcessID: le.Uint64(r[8:]), Timestamp: le.Uint64(r[16:]),
			Direction: Direction(r[60]), IPVersion: r[61], Protocol: r[62], Action: Action(r[63])}
		if h.Direction != Outbound && h.Direction != Inbound {
			return &DecodeError{Type: t, Field: "direction", Offset: base + 60,
				Reason: fmt.Sprintf("record %d: %d, want 1 or 2", i, r[60])}
		}
		if h.IPVersion != 4 && h.IPVersion != 6 {
			return &DecodeError{Type: t, Field: "ip_version", Offset: base + 61,
				Reason: fmt.Sprintf("record %d: %d, want 4 or 6", i, r[61])}
		}
		local, err := decodeAddr(b, base+24, h.IPVersion, "local_addr")
		if err != nil {
			return hitAddrError(err)
		}
		remote, err := decodeAddr(b, base+40, h.IPVersion, "remote_addr")
		if err != nil {
			return hitAddrError(err)
		}
		h.Local = netip.AddrPortFrom(local, le.Uint16(r[56:]))
		h.Remote = netip.AddrPortFrom(remote, le.Uint16(r[58:]))
		if h.Action != ActionPermit && h.Action != ActionBlock {
			return &DecodeError{Type: t, Field: "action", Offset: base + 63,
				Reason: fmt.Sprintf("record %d: %d, want 1 or 2", i, r[63])}
		}
		m.Hits[i] = h
	}
	return nil
}

// hitAddrError retypes decodeAddr's error (made for CONNECT_REQUEST) for HIT_BATCH.
func hitAddrError(err error) error {
	var de *DecodeError
	if errors.As(err, &de) {
		de.Type = TypeHitBatch
	}
	return err
}

// Ack is the driver's answer to a service message that asks for nothing else.
type Ack struct {
	Status NTStatus // StatusSuccess; StatusNotFound for a verdict that came too late; StatusInvalidParameter for a malformed message
}

// Type returns TypeAck.
func (*Ack) Type() Type { return TypeAck }

// AppendBinary implements Message.
func (m *Ack) AppendBinary(b []byte) ([]byte, error) {
	b = appendHeader(b, TypeAck, AckSize)
	b = le.AppendUint32(b, uint32(m.Status))
	return le.AppendUint32(b, 0), nil
}

func (m *Ack) decodeBody(b []byte) error {
	m.Status = NTStatus(le.Uint32(b[16:]))
	return reservedZero(TypeAck, b, 20, 4, "reserved")
}
