package windows

import (
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/proto"
)

// DeviceQuerier lists the drive letters and the NT devices behind them
// (QueryDosDevice on Windows).
type DeviceQuerier interface {
	// DosDevices maps each drive ("C:") to its NT device path (`\Device\HarddiskVolume3`).
	DosDevices() (map[string]string, error)
}

// ProcessQuerier asks Windows about a running process.
type ProcessQuerier interface {
	// ProcessUser returns the account (DOMAIN\name, via LookupAccountSid) and the SID
	// string of the process token's user.
	ProcessUser(pid uint32) (account, sid string, err error)
	// ProcessImage returns the Win32 path of the process's image, cased as on disk
	// (QueryFullProcessImageName).
	ProcessImage(pid uint32) (string, error)
}

// ServiceQuerier lists the running services by hosting process
// (EnumServicesStatusEx with SERVICE_WIN32).
type ServiceQuerier interface {
	// ServicesByPID maps each process id to the names of the services it hosts.
	ServicesByPID() (map[uint32][]string, error)
}

// deviceRefreshEvery bounds how often an unknown device makes DeviceMap re-read the
// drive table (a volume mounted since the last read).
const deviceRefreshEvery = 5 * time.Second

// DeviceMap turns NT paths (`\Device\HarddiskVolume3\Windows\System32\curl.exe`, as
// WFP reports them) into the DOS paths a person recognises (`C:\Windows\...`). It
// caches the drive table and re-reads it, at most every few seconds, when it meets a
// device it does not know. Safe for concurrent use.
type DeviceMap struct {
	q   DeviceQuerier
	now func() time.Time

	mu      sync.Mutex
	devs    []devEntry // longest device first
	lastTry time.Time
}

type devEntry struct{ device, lowerDevice, drive string }

// NewDeviceMap returns a DeviceMap over q; q nil maps only the device-independent
// forms (`\??\C:\...`, `\Device\Mup\...`).
func NewDeviceMap(q DeviceQuerier) *DeviceMap {
	return &DeviceMap{q: q, now: time.Now}
}

func (m *DeviceMap) load() {
	m.lastTry = m.now()
	if m.q == nil {
		return
	}
	table, err := m.q.DosDevices()
	if err != nil {
		return // keep the old table
	}
	devs := make([]devEntry, 0, len(table))
	for drive, dev := range table {
		dev = strings.TrimRight(dev, `\`)
		if dev == "" || len(drive) != 2 || drive[1] != ':' {
			continue
		}
		devs = append(devs, devEntry{device: dev, lowerDevice: strings.ToLower(dev), drive: strings.ToUpper(drive)})
	}
	sort.Slice(devs, func(i, j int) bool {
		if len(devs[i].device) != len(devs[j].device) {
			return len(devs[i].device) > len(devs[j].device)
		}
		return devs[i].drive < devs[j].drive
	})
	m.devs = devs
}

// DosPath returns the DOS form of the NT path nt, or nt unchanged if no drive maps it.
func (m *DeviceMap) DosPath(nt string) string {
	if nt == "" {
		return ""
	}
	lower := strings.ToLower(nt)
	for _, prefix := range []string{`\??\`, `\\?\`} {
		if strings.HasPrefix(nt, prefix) && len(nt) >= len(prefix)+2 && nt[len(prefix)+1] == ':' {
			return nt[len(prefix):]
		}
	}
	if rest, ok := strings.CutPrefix(lower, `\device\mup\`); ok {
		return `\\` + nt[len(nt)-len(rest):]
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastTry.IsZero() {
		m.load()
	}
	if p, ok := m.lookup(nt, lower); ok {
		return p
	}
	if strings.HasPrefix(lower, `\device\`) && m.now().Sub(m.lastTry) >= deviceRefreshEvery {
		m.load()
		if p, ok := m.lookup(nt, lower); ok {
			return p
		}
	}
	return nt
}

func (m *DeviceMap) lookup(nt, lower string) (string, bool) {
	for _, d := range m.devs {
		if strings.HasPrefix(lower, d.lowerDevice) && (len(nt) == len(d.device) || nt[len(d.device)] == '\\') {
			return d.drive + nt[len(d.device):], true
		}
	}
	return "", false
}

// identityTTL is how long what a process id was found to be is believed; short,
// because Windows reuses process ids.
const identityTTL = 10 * time.Second

// identityCacheMax bounds the per-process cache; when full it starts over.
const identityCacheMax = 4096

// describer turns CONNECT_REQUESTs into engine.Requests.
type describer struct {
	devices  *DeviceMap
	procs    ProcessQuerier
	services ServiceQuerier
	now      func() time.Time

	mu       sync.Mutex
	byPID    map[uint32]procIdentity
	svcSnap  map[uint32][]string
	svcUntil time.Time
}

type procIdentity struct {
	user, image string
	until       time.Time
}

func newDescriber(dq DeviceQuerier, pq ProcessQuerier, sq ServiceQuerier) *describer {
	return &describer{devices: NewDeviceMap(dq), procs: pq, services: sq, now: time.Now,
		byPID: make(map[uint32]procIdentity)}
}

func (d *describer) identity(pid uint32) procIdentity {
	now := d.now()
	d.mu.Lock()
	id, ok := d.byPID[pid]
	d.mu.Unlock()
	if ok && now.Before(id.until) {
		return id
	}
	id = procIdentity{until: now.Add(identityTTL)}
	if d.procs != nil {
		if acct, _, err := d.procs.ProcessUser(pid); err == nil {
			id.user = acct
		}
		if img, err := d.procs.ProcessImage(pid); err == nil {
			id.image = img
		}
	}
	d.mu.Lock()
	if len(d.byPID) >= identityCacheMax {
		d.byPID = make(map[uint32]procIdentity)
	}
	d.byPID[pid] = id
	d.mu.Unlock()
	return id
}

func (d *describer) servicesOf(pid uint32) []string {
	if d.services == nil {
		return nil
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.After(d.svcUntil) {
		// A snapshot of every service costs about as much as asking for one process.
		if snap, err := d.services.ServicesByPID(); err == nil {
			d.svcSnap = snap
		}
		d.svcUntil = now.Add(2 * time.Second)
	}
	s := d.svcSnap[pid]
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}

// baseName returns the last element of a Windows path.
func baseName(p string) string {
	if i := strings.LastIndexAny(p, `\/`); i >= 0 {
		return p[i+1:]
	}
	return p
}

// describe builds the engine.Request for cr. The path the driver sent decides which
// program it is; Windows is asked only for what the driver cannot know (user, the
// path's casing, hosted services), and an answer that disagrees with the driver's
// path is ignored rather than trusted (the process id may already be reused).
func (d *describer) describe(cr *proto.ConnectRequest, id engine.RequestID) *engine.Request {
	req := &engine.Request{
		ID:       id,
		Protocol: engine.Protocol(cr.Protocol),
		Local:    netip.AddrPortFrom(cr.Local.Addr().Unmap(), cr.Local.Port()),
		Remote:   netip.AddrPortFrom(cr.Remote.Addr().Unmap(), cr.Remote.Port()),
		UID:      -1,
	}
	if cr.Timestamp != 0 {
		req.Time = cr.Time()
	} else {
		req.Time = d.now().UTC()
	}
	switch cr.Direction {
	case proto.Outbound:
		req.Direction = engine.Outbound
	case proto.Inbound:
		req.Direction = engine.Inbound
	}
	if cr.ProcessID > 0 && cr.ProcessID <= 0x7fffffff {
		req.PID = int32(cr.ProcessID)
	}
	req.Exe = d.devices.DosPath(cr.PathString())
	if req.Exe != "" {
		// The driver reports the kernel's image path of the process (the ALE app
		// id: the NT path of the file the image section was made from, mapped to a
		// drive letter with the service's own, global device map). Windows has no
		// per-process mount namespaces a user could remap it with, so it names the
		// file the process runs.
		req.Identity = engine.IdentityVerified
	}
	if req.PID == 0 {
		return req
	}
	if req.PID == 4 && req.Exe == "" {
		req.Exe = "System" // the kernel's own connections carry no image path
		req.Identity = engine.IdentityVerified
	}
	ident := d.identity(uint32(req.PID))
	if ident.image != "" && req.Exe != "" && !strings.EqualFold(ident.image, req.Exe) {
		return req // the id now names another process: what Windows says is not about this one
	}
	if ident.image != "" && req.Exe != "" {
		req.Exe = ident.image // WFP lower-cases paths; show them as on disk
	}
	req.User = ident.user
	if strings.EqualFold(baseName(req.Exe), "svchost.exe") {
		req.Services = d.servicesOf(uint32(req.PID))
	}
	return req
}
