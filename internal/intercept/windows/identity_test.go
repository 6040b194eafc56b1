package windows

import (
	"errors"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/proto"
)

type fakeDevices struct {
	mu    sync.Mutex
	table map[string]string
	err   error
	calls int
}

func (f *fakeDevices) DosDevices() (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	out := make(map[string]string, len(f.table))
	for k, v := range f.table {
		out[k] = v
	}
	return out, nil
}

func TestDeviceMapDosPath(t *testing.T) {
	fd := &fakeDevices{table: map[string]string{
		"C:": `\Device\HarddiskVolume3`,
		"D:": `\Device\HarddiskVolume31`,
		"E:": `\Device\CdRom0`,
		"Z:": `\Device\HarddiskVolume3\` + "", // trailing backslash is tolerated
	}}
	delete(fd.table, "Z:")
	m := NewDeviceMap(fd)
	for _, c := range []struct{ in, want string }{
		{`\Device\HarddiskVolume3\Windows\System32\curl.exe`, `C:\Windows\System32\curl.exe`},
		{`\device\harddiskvolume3\windows\system32\curl.exe`, `C:\windows\system32\curl.exe`}, // WFP lower-cases
		{`\Device\HarddiskVolume31\Tools\x.exe`, `D:\Tools\x.exe`},                            // longest device wins, not a prefix of 3
		{`\Device\HarddiskVolume3`, `C:`},
		{`\Device\HarddiskVolume3x\a.exe`, `\Device\HarddiskVolume3x\a.exe`}, // not that device
		{`\Device\CdRom0\setup.exe`, `E:\setup.exe`},
		{`\??\C:\Program Files\app.exe`, `C:\Program Files\app.exe`},
		{`\\?\C:\app.exe`, `C:\app.exe`},
		{`\Device\Mup\server\share\tool.exe`, `\\server\share\tool.exe`},
		{`\device\mup\Server\Share\tool.exe`, `\\Server\Share\tool.exe`},
		{`System`, `System`},
		{``, ``},
	} {
		if got := m.DosPath(c.in); got != c.want {
			t.Errorf("DosPath(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestDeviceMapRefreshesForNewVolumeAtMostEvery5s(t *testing.T) {
	fd := &fakeDevices{table: map[string]string{"C:": `\Device\HarddiskVolume3`}}
	m := NewDeviceMap(fd)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.now = func() time.Time { return now }
	const usb = `\Device\HarddiskVolume9\run.exe`
	if got := m.DosPath(usb); got != usb {
		t.Fatalf("unknown volume: %q", got)
	}
	fd.mu.Lock()
	fd.table["F:"] = `\Device\HarddiskVolume9`
	fd.mu.Unlock()
	now = now.Add(time.Second)
	if got := m.DosPath(usb); got != usb {
		t.Fatalf("re-read before 5 s passed: %q", got)
	}
	if fd.calls != 1 {
		t.Fatalf("%d reads of the drive table, want 1", fd.calls)
	}
	now = now.Add(5 * time.Second)
	if got := m.DosPath(usb); got != `F:\run.exe` {
		t.Fatalf("after the volume appeared: %q", got)
	}
	// A failing read keeps the table it had.
	fd.mu.Lock()
	fd.err = errors.New("access denied")
	fd.mu.Unlock()
	now = now.Add(time.Minute)
	m.DosPath(`\Device\Other\x`)
	if got := m.DosPath(`\Device\HarddiskVolume3\a`); got != `C:\a` {
		t.Fatalf("after a failed refresh: %q", got)
	}
}

type fakeProcs struct {
	users  map[uint32]string
	images map[uint32]string
	calls  int
}

func (f *fakeProcs) ProcessUser(pid uint32) (string, string, error) {
	f.calls++
	u, ok := f.users[pid]
	if !ok {
		return "", "", errors.New("no such process")
	}
	return u, "S-1-5-21-1", nil
}

func (f *fakeProcs) ProcessImage(pid uint32) (string, error) {
	p, ok := f.images[pid]
	if !ok {
		return "", errors.New("no such process")
	}
	return p, nil
}

type fakeServices struct {
	byPID map[uint32][]string
	calls int
}

func (f *fakeServices) ServicesByPID() (map[uint32][]string, error) {
	f.calls++
	return f.byPID, nil
}

func connectReq(pid uint64, path string) *proto.ConnectRequest {
	return &proto.ConnectRequest{
		RequestID: 1, Layer: proto.LayerConnectV6, Direction: proto.Outbound, IPVersion: 6, Protocol: 17,
		Local:     netip.MustParseAddrPort("[::ffff:198.18.0.1]:5000"),
		Remote:    netip.MustParseAddrPort("[2001:2::9]:53"),
		ProcessID: pid, Timestamp: 133000000000000000, Path: proto.EncodePath(path),
	}
}

func TestDescribe(t *testing.T) {
	fp := &fakeProcs{
		users:  map[uint32]string{1200: `DESKTOP\alice`, 880: `NT AUTHORITY\NETWORK SERVICE`, 5000: `DESKTOP\bob`},
		images: map[uint32]string{1200: `C:\Program Files\Mozilla Firefox\firefox.exe`, 880: `C:\Windows\System32\svchost.exe`, 5000: `C:\Games\game.exe`},
	}
	fs := &fakeServices{byPID: map[uint32][]string{880: {"Dnscache", "NlaSvc"}}}
	d := newDescriber(&fakeDevices{table: map[string]string{"C:": `\Device\HarddiskVolume3`}}, fp, fs)

	got := d.describe(connectReq(1200, `\device\harddiskvolume3\program files\mozilla firefox\firefox.exe`), 77)
	want := &engine.Request{
		ID: 77, Time: time.Date(2022, 6, 18, 4, 26, 40, 0, time.UTC), Direction: engine.Outbound, Protocol: engine.UDP,
		Local:  netip.MustParseAddrPort("198.18.0.1:5000"), // v4-mapped is shown as IPv4
		Remote: netip.MustParseAddrPort("[2001:2::9]:53"),
		PID:    1200, Exe: `C:\Program Files\Mozilla Firefox\firefox.exe`, Identity: engine.IdentityVerified, UID: -1, User: `DESKTOP\alice`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("describe:\n got %+v\nwant %+v", got, want)
	}

	got = d.describe(connectReq(880, `\device\harddiskvolume3\windows\system32\svchost.exe`), 78)
	if got.Exe != `C:\Windows\System32\svchost.exe` || !reflect.DeepEqual(got.Services, []string{"Dnscache", "NlaSvc"}) ||
		got.User != `NT AUTHORITY\NETWORK SERVICE` {
		t.Fatalf("svchost: %+v", got)
	}

	// The process id now names another program: trust the driver's path, nothing else.
	got = d.describe(connectReq(5000, `\device\harddiskvolume3\tools\curl.exe`), 79)
	if got.Exe != `C:\tools\curl.exe` || got.User != "" || got.PID != 5000 {
		t.Fatalf("reused pid: %+v", got)
	}

	// No path and an exited process: unknown, never guessed.
	got = d.describe(connectReq(6000, ``), 80)
	if got.Exe != "" || got.User != "" {
		t.Fatalf("exited: %+v", got)
	}
	// The kernel itself.
	got = d.describe(connectReq(4, ``), 81)
	if got.Exe != "System" {
		t.Fatalf("pid 4: %+v", got)
	}
	// Unknown pid and an out-of-range pid.
	got = d.describe(connectReq(0, `\device\harddiskvolume3\a.exe`), 82)
	if got.PID != 0 || got.Exe != `C:\a.exe` {
		t.Fatalf("pid 0: %+v", got)
	}
	if got := d.describe(connectReq(1<<40, ``), 83); got.PID != 0 {
		t.Fatalf("huge pid: %+v", got)
	}

	// Identities are cached per pid; services are snapshotted.
	calls := fp.calls
	d.describe(connectReq(1200, `\device\harddiskvolume3\program files\mozilla firefox\firefox.exe`), 84)
	d.describe(connectReq(880, `\device\harddiskvolume3\windows\system32\svchost.exe`), 85)
	if fp.calls != calls || fs.calls != 1 {
		t.Fatalf("lookups not cached: %d user lookups (had %d), %d service snapshots", fp.calls, calls, fs.calls)
	}
}

func TestDescribeInbound(t *testing.T) {
	d := newDescriber(nil, nil, nil)
	cr := &proto.ConnectRequest{
		RequestID: 1, Layer: proto.LayerRecvAcceptV4, Direction: proto.Inbound, IPVersion: 4, Protocol: 6,
		Local: netip.MustParseAddrPort("198.18.0.1:22"), Remote: netip.MustParseAddrPort("198.19.0.5:40000"),
		ProcessID: 900, Path: proto.EncodePath(`\??\C:\sshd.exe`),
	}
	got := d.describe(cr, 1)
	if got.Direction != engine.Inbound || got.Protocol != engine.TCP || got.Exe != `C:\sshd.exe` || got.Time.IsZero() || got.UID != -1 {
		t.Fatalf("%+v", got)
	}
}
