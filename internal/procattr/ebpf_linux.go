package procattr

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/latchfw/latch/internal/cgroup2"
)

// connRecord is the map value the hooks write for a socket cookie. Its layout is the
// one the program stores on its stack (see hookProgram).
type connRecord struct {
	PidTgid uint64   // bpf_get_current_pid_tgid: tgid << 32 | tid
	UIDGid  uint64   // bpf_get_current_uid_gid: gid << 32 | uid
	BootNs  uint64   // bpf_ktime_get_boot_ns at connect/sendmsg
	Comm    [16]byte // bpf_get_current_comm of the calling thread
	// StartNs and ExecID identify the process and its image exactly: its thread group
	// leader's start_boottime (the pid and it never repeat together) and self_exec_id
	// (one more with every execve). 0 when the kernel would not let the hooks read the
	// task (see taskFields).
	StartNs uint64
	ExecID  uint64
	// ExeIno is the inode number of the file the process executed when it
	// connected, sent or bound (current->mm->exe_file->f_inode->i_ino); 0 when the
	// hooks could not read it (see exeFields). It tells a socket made by one image
	// from the image the process runs when Resolve looks. (The device is not kept:
	// btrfs and overlayfs report another one to stat than the super block's; ExeMnt
	// tells the file system instead.)
	ExeIno uint64
	// ExeFlags is that executable file's f_flags (current->mm->exe_file->f_flags;
	// 0 when ExeIno is). Without fmodeExec the kernel did not open the file to
	// execute it: prctl(PR_SET_MM_MAP with exe_fd, or PR_SET_MM_EXE_FILE) put a
	// file the process opened as its executable (see exeNotExecuted).
	ExeFlags uint64
	// ExeMnt is the id of the mount the executable file was reached through
	// (real_mount(exe_file->f_path.mnt)); 0 when ExeIno is. With ExeIno it
	// tells the file from one with the same inode number on another file system
	// (review32). Where uniqueMountIDs (Linux 6.8+) it is the mount's unique
	// 64-bit id, mnt_id_unique, which statx's STATX_MNT_ID_UNIQUE gives for
	// /proc/PID/exe and the kernel never gives another mount; else the old
	// mnt_id (STATX_MNT_ID), which the next mount made takes once this one is
	// gone (review33).
	ExeMnt uint64
}

const connRecordSize = 80

// fmodeExec is __FMODE_EXEC in a file's f_flags: the kernel opened the file to
// execute it (execve, uselib). open(2) drops the bit (it is not one of
// VALID_OPEN_FLAGS), so a file a process opened itself never has it.
const fmodeExec = 0x20

// exeNotExecuted says why the process that made the record is not verified
// although /proc may name an allowed program as its executable, or "": the
// executable it ran was not a file the kernel opened for an execve but one
// set with prctl(PR_SET_MM). A process in the host's user namespace cannot
// make that call itself, but a CLONE_VM child it made in a user namespace of
// its own can, on the memory they share (review28's neighbour). knowsExe
// says the hooks read the executable (else ExeFlags is not set).
func (r *connRecord) exeNotExecuted(knowsExe bool) string {
	if !knowsExe || r.ExeIno == 0 || r.ExeFlags&fmodeExec != 0 {
		return ""
	}
	return "its executable was set with prctl(PR_SET_MM), not by executing it: it may run code of another program"
}

// The kernel copies the map's value size into a connRecord (cgroupHooks.lookup):
// the two must agree exactly.
var (
	_ [connRecordSize - unsafe.Sizeof(connRecord{})]byte
	_ [unsafe.Sizeof(connRecord{}) - connRecordSize]byte
)

// exeFields are the offsets, from the kernel's BTF, of the chain the hooks follow
// from the current task to its executable's inode number: task_struct.mm,
// mm_struct.exe_file, file.f_inode, inode.i_ino; file.f_flags (4 bytes); and
// to the id of the mount the file was reached through: file.f_path.mnt (a
// struct vfsmount inside a struct mount, at mount.mnt) and mount.mnt_id_unique
// (8 bytes) where uniqueMountIDs, else mount.mnt_id (4 bytes).
type exeFields struct {
	mm, exeFile, fInode, iIno, fFlags uint32
	inoSize                           uint8
	fPathMnt                          uint32 // file.f_path + path.mnt
	mountMnt, mountID                 uint32 // mount.mnt, mount.mnt_id_unique or mnt_id
	mountIDSize                       uint8  // 8 (mnt_id_unique) or 4 (mnt_id)
}

// statxUniqueMountID says whether the kernel's statx gives a mount's unique id
// (STATX_MNT_ID_UNIQUE, Linux 6.8+; an older kernel ignores the request and
// gives the old id, STATX_MNT_ID).
var statxUniqueMountID = sync.OnceValue(func() bool {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, "/", 0, unix.STATX_MNT_ID_UNIQUE, &stx)
	return err == nil && stx.Mask&unix.STATX_MNT_ID_UNIQUE != 0
})

// uniqueMountIDs says whether the hooks record, and Resolve compares, mounts'
// unique ids (struct mount's mnt_id_unique, STATX_MNT_ID_UNIQUE; Linux 6.8+):
// where statx gives them and the kernel's BTF has the member. Else both use
// the old ids (mnt_id, STATX_MNT_ID), which the kernel gives again to the next
// mount made once a mount is gone (review33: a program that connected from a
// file system of its own, let its mount go and had a bind mount of the allowed
// program take the freed id was verified): on those kernels that remains so.
// One decision for both sides, so that a record's id and statx's are of one
// kind.
var uniqueMountIDs = sync.OnceValue(func() bool {
	if !statxUniqueMountID() {
		return false
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	var mount *btf.Struct
	if spec.TypeByName("mount", &mount) != nil {
		return false
	}
	_, typ, ok := memberOffset(mount, "mnt_id_unique")
	size, err := btf.Sizeof(typ)
	return ok && err == nil && size == 8
})

// kernelExeFields finds the members exeFields names in the running kernel's BTF.
func kernelExeFields() (exeFields, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return exeFields{}, fmt.Errorf("load kernel BTF: %w", err)
	}
	var f exeFields
	for _, m := range []struct {
		strct, member string
		off           *uint32
		size          *uint8
	}{
		{"task_struct", "mm", &f.mm, nil},
		{"mm_struct", "exe_file", &f.exeFile, nil},
		{"file", "f_inode", &f.fInode, nil},
		{"inode", "i_ino", &f.iIno, &f.inoSize},
	} {
		var st *btf.Struct
		if err := spec.TypeByName(m.strct, &st); err != nil {
			return exeFields{}, fmt.Errorf("kernel BTF: struct %s: %w", m.strct, err)
		}
		off, typ, ok := memberOffset(st, m.member)
		if !ok {
			return exeFields{}, fmt.Errorf("kernel BTF: struct %s has no member %s", m.strct, m.member)
		}
		size, err := btf.Sizeof(typ)
		if err != nil {
			return exeFields{}, fmt.Errorf("kernel BTF: %s.%s: %w", m.strct, m.member, err)
		}
		if m.size == nil && size != 8 || m.size != nil && size != 4 && size != 8 {
			return exeFields{}, fmt.Errorf("kernel BTF: %s.%s of size %d", m.strct, m.member, size)
		}
		*m.off = off
		if m.size != nil {
			*m.size = uint8(size)
		}
	}
	var file *btf.Struct
	if err := spec.TypeByName("file", &file); err != nil {
		return exeFields{}, fmt.Errorf("kernel BTF: struct file: %w", err)
	}
	off, typ, ok := memberOffset(file, "f_flags")
	if !ok {
		return exeFields{}, errors.New("kernel BTF: struct file has no member f_flags")
	}
	if size, err := btf.Sizeof(typ); err != nil || size != 4 {
		return exeFields{}, fmt.Errorf("kernel BTF: file.f_flags of size %d (%v)", size, err)
	}
	f.fFlags = off
	var path, mount *btf.Struct
	if err := spec.TypeByName("path", &path); err != nil {
		return exeFields{}, fmt.Errorf("kernel BTF: struct path: %w", err)
	}
	if err := spec.TypeByName("mount", &mount); err != nil {
		return exeFields{}, fmt.Errorf("kernel BTF: struct mount: %w", err)
	}
	fPath, _, ok := memberOffset(file, "f_path")
	if !ok {
		return exeFields{}, errors.New("kernel BTF: struct file has no member f_path")
	}
	pathMnt, typ, ok := memberOffset(path, "mnt")
	if size, err := btf.Sizeof(typ); !ok || err != nil || size != 8 {
		return exeFields{}, fmt.Errorf("kernel BTF: path.mnt missing or of size %d (%v)", size, err)
	}
	f.fPathMnt = fPath + pathMnt
	if f.mountMnt, _, ok = memberOffset(mount, "mnt"); !ok {
		return exeFields{}, errors.New("kernel BTF: struct mount has no member mnt")
	}
	id, idSize := "mnt_id", 4
	if uniqueMountIDs() {
		id, idSize = "mnt_id_unique", 8
	}
	f.mountID, typ, ok = memberOffset(mount, id)
	if size, err := btf.Sizeof(typ); !ok || err != nil || size != idSize {
		return exeFields{}, fmt.Errorf("kernel BTF: mount.%s missing or of size %d (%v)", id, size, err)
	}
	f.mountIDSize = uint8(idSize)
	return f, nil
}

// memberOffset finds a named member of a struct or union in bytes, looking into
// anonymous struct and union members (mm_struct keeps its fields in one).
func memberOffset(typ btf.Type, name string) (uint32, btf.Type, bool) {
	var members []btf.Member
	switch t := typ.(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return 0, nil, false
	}
	for _, m := range members {
		if m.BitfieldSize != 0 {
			continue
		}
		if m.Name == name {
			return m.Offset.Bytes(), m.Type, true
		}
		if m.Name == "" {
			if off, t, ok := memberOffset(btf.UnderlyingType(m.Type), name); ok {
				return m.Offset.Bytes() + off, t, true
			}
		}
	}
	return 0, nil, false
}

// taskFields are the offsets in struct task_struct, from the kernel's BTF, that the
// hooks read to fill StartNs and ExecID.
type taskFields struct {
	groupLeader, startBoottime, selfExecID uint32
	execIDSize                             uint8 // 4 before Linux 5.7, 8 since
}

// kernelTaskFields finds the task_struct members the hooks read in the running
// kernel's BTF.
func kernelTaskFields() (taskFields, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return taskFields{}, fmt.Errorf("load kernel BTF: %w", err)
	}
	var ts *btf.Struct
	if err := spec.TypeByName("task_struct", &ts); err != nil {
		return taskFields{}, fmt.Errorf("kernel BTF: task_struct: %w", err)
	}
	var f taskFields
	found := 0
	for _, m := range ts.Members {
		if m.BitfieldSize != 0 {
			continue
		}
		switch m.Name {
		case "group_leader":
			f.groupLeader = m.Offset.Bytes()
			found++
		case "start_boottime":
			f.startBoottime = m.Offset.Bytes()
			found++
		case "self_exec_id":
			size, err := btf.Sizeof(m.Type)
			if err != nil || (size != 4 && size != 8) {
				return taskFields{}, fmt.Errorf("kernel BTF: task_struct.self_exec_id of size %d (%v)", size, err)
			}
			f.selfExecID, f.execIDSize = m.Offset.Bytes(), uint8(size)
			found++
		}
	}
	if found != 3 {
		return taskFields{}, fmt.Errorf("kernel BTF: task_struct lacks group_leader, start_boottime or self_exec_id")
	}
	return f, nil
}

func (r *connRecord) tgid() int32 { return int32(r.PidTgid >> 32) }

func (r *connRecord) comm() string {
	c := r.Comm[:]
	if i := bytes.IndexByte(c, 0); i >= 0 {
		c = c[:i]
	}
	return string(c)
}

// cgroupHooks owns the map and the programs attached to the cgroup.
type cgroupHooks struct {
	conns *ebpf.Map
	progs []*ebpf.Program
	links []link.Link
	// identifies: the records carry StartNs and ExecID.
	identifies bool
	// knowsExe: the records carry ExeIno, ExeFlags and ExeMnt. Without it no
	// connection the hooks attribute is verified (see Resolver.ExeCheck), and
	// exeWhy says why the hooks do not read the executable.
	knowsExe bool
	exeWhy   string
	// btfTask: the hooks read the task through bpf_get_current_task_btf's
	// pointers (plain loads), not bpf_probe_read_kernel.
	btfTask bool
}

// hookedAttachTypes are the cgroup hooks that see every outbound TCP connect, every
// UDP datagram sent with an address (connected UDP sockets go through connect) and
// every explicit bind (servers, for inbound connections).
var hookedAttachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Connect,
	ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCGroupUDP4Sendmsg,
	ebpf.AttachCGroupUDP6Sendmsg,
	ebpf.AttachCGroupInet4Bind,
	ebpf.AttachCGroupInet6Bind,
}

// hookProgram records cookie → (pid_tgid, uid_gid, boot time, comm) in conns and
// always allows the operation (returns 1): it observes, never filters. With task
// fields it also records the thread group leader's start time and exec id, read
// with bpf_probe_read_kernel (which zero-fills what it cannot read).
//
// With exe fields it also records the inode number of the executable, following
// current->mm->exe_file->f_inode, and the executable file's f_flags (zero where
// a pointer is NULL, as for a kernel thread: every read of a bad address
// zero-fills).
//
// With btfTask the task is bpf_get_current_task_btf's, whose pointers the
// program follows with plain loads (the verifier makes each a load that reads 0
// where the address is bad, as bpf_probe_read_kernel zero-fills), at a fraction
// of a helper call's cost each: the same record, read cheaper.
func hookProgram(conns *ebpf.Map, task *taskFields, exe *exeFields, btfTask bool) asm.Instructions {
	const (
		keyOff   = -8                  // u64 cookie
		valueOff = -8 - connRecordSize // struct connRecord
		leadOff  = valueOff - 8        // u64 scratch: the group leader's address
	)
	insns := asm.Instructions{
		// r6 = ctx (struct bpf_sock_addr *)
		asm.Mov.Reg(asm.R6, asm.R1),
		// key = bpf_get_socket_cookie(ctx)
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, keyOff, asm.R0, asm.DWord),
		asm.FnGetCurrentPidTgid.Call(),
		asm.StoreMem(asm.RFP, valueOff, asm.R0, asm.DWord),
		asm.FnGetCurrentUidGid.Call(),
		asm.StoreMem(asm.RFP, valueOff+8, asm.R0, asm.DWord),
		asm.FnKtimeGetBootNs.Call(),
		asm.StoreMem(asm.RFP, valueOff+16, asm.R0, asm.DWord),
		// bpf_get_current_comm(&value.comm, 16)
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, valueOff+24),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnGetCurrentComm.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.StoreMem(asm.RFP, valueOff+40, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, valueOff+48, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, valueOff+56, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, valueOff+64, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, valueOff+72, asm.R0, asm.DWord),
	}
	read := func(dst int16, size int32, base asm.Register, off uint32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, int32(dst)),
			asm.Mov.Imm(asm.R2, size),
			asm.Mov.Reg(asm.R3, base),
			asm.Add.Imm(asm.R3, int32(off)),
			asm.FnProbeReadKernel.Call(),
		}
	}
	// mountID reads the mount id of the file at r8 into ExeMnt (zeroed):
	// real_mount(file->f_path.mnt)->mnt_id_unique (or mnt_id), the vfsmount's
	// address less mount.mnt plus the id's offset, through
	// bpf_probe_read_kernel (the address lies outside the struct vfsmount a
	// BTF pointer may load from). The vfsmount's address is in R3 already.
	mountID := func(exe *exeFields) asm.Instructions {
		return asm.Instructions{
			asm.Add.Imm(asm.R3, int32(exe.mountID)-int32(exe.mountMnt)),
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, valueOff+72),
			asm.Mov.Imm(asm.R2, int32(exe.mountIDSize)),
			asm.FnProbeReadKernel.Call(),
		}
	}
	if task != nil {
		if btfTask {
			// r7 = current (a BTF pointer); every read a plain load.
			insns = append(insns, asm.FnGetCurrentTaskBtf.Call(), asm.Mov.Reg(asm.R7, asm.R0))
			if exe != nil {
				// r8 = current->mm->exe_file, its f_flags; r8 = its f_inode;
				// then the inode's number.
				insns = append(insns,
					asm.LoadMem(asm.R8, asm.R7, int16(exe.mm), asm.DWord),
					asm.LoadMem(asm.R8, asm.R8, int16(exe.exeFile), asm.DWord),
					asm.LoadMem(asm.R0, asm.R8, int16(exe.fFlags), asm.Word),
					asm.StoreMem(asm.RFP, valueOff+64, asm.R0, asm.DWord),
					asm.LoadMem(asm.R3, asm.R8, int16(exe.fPathMnt), asm.DWord),
				)
				insns = append(insns, mountID(exe)...)
				insns = append(insns,
					asm.LoadMem(asm.R8, asm.R8, int16(exe.fInode), asm.DWord),
					asm.LoadMem(asm.R0, asm.R8, int16(exe.iIno), sizeOf(exe.inoSize)),
					asm.StoreMem(asm.RFP, valueOff+56, asm.R0, asm.DWord),
				)
			}
			insns = append(insns,
				asm.LoadMem(asm.R7, asm.R7, int16(task.groupLeader), asm.DWord),
				asm.LoadMem(asm.R0, asm.R7, int16(task.startBoottime), asm.DWord),
				asm.StoreMem(asm.RFP, valueOff+40, asm.R0, asm.DWord),
				asm.LoadMem(asm.R0, asm.R7, int16(task.selfExecID), sizeOf(task.execIDSize)),
				asm.StoreMem(asm.RFP, valueOff+48, asm.R0, asm.DWord),
			)
		}
	}
	if task != nil && !btfTask {
		// r7 = current; r7 = current->group_leader
		insns = append(insns, asm.FnGetCurrentTask.Call(), asm.Mov.Reg(asm.R7, asm.R0))
		if exe != nil {
			// r8 = current->mm->exe_file->f_inode, one pointer at a time through
			// the scratch slot; then the inode's number. The steps go in this
			// order, each from the pointer the one before it read: an offset
			// is where to read in its own struct, never which step it is (two
			// structs may well have members at the same offset).
			deref := func(base asm.Register, off uint32) asm.Instructions {
				return append(read(leadOff, 8, base, off), asm.LoadMem(asm.R8, asm.RFP, leadOff, asm.DWord))
			}
			insns = append(insns, deref(asm.R7, exe.mm)...)      // r8 = current->mm
			insns = append(insns, deref(asm.R8, exe.exeFile)...) // r8 = mm->exe_file
			// The file's f_flags, into the low half of the zeroed slot.
			insns = append(insns, read(valueOff+64, 4, asm.R8, exe.fFlags)...)
			// The vfsmount's address, then its mount's id.
			insns = append(insns, read(valueOff+72, 8, asm.R8, exe.fPathMnt)...)
			insns = append(insns, asm.LoadMem(asm.R3, asm.RFP, valueOff+72, asm.DWord))
			insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.StoreMem(asm.RFP, valueOff+72, asm.R0, asm.DWord))
			insns = append(insns, mountID(exe)...)
			insns = append(insns, deref(asm.R8, exe.fInode)...) // r8 = exe_file->f_inode
			insns = append(insns, read(valueOff+56, int32(exe.inoSize), asm.R8, exe.iIno)...)
		}
		insns = append(insns, read(leadOff, 8, asm.R7, task.groupLeader)...)
		insns = append(insns, asm.LoadMem(asm.R7, asm.RFP, leadOff, asm.DWord))
		insns = append(insns, read(valueOff+40, 8, asm.R7, task.startBoottime)...)
		insns = append(insns, read(valueOff+48, int32(task.execIDSize), asm.R7, task.selfExecID)...)
	}
	return append(insns,
		// bpf_map_update_elem(conns, &key, &value, BPF_ANY)
		asm.LoadMapPtr(asm.R1, conns.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, valueOff),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
	)
}

// fitLoads says whether every offset the hooks read at fits a load's 16-bit
// offset (else they read through bpf_probe_read_kernel, whose address is
// computed).
func fitLoads(task *taskFields, exe *exeFields) bool {
	offs := []uint32{task.groupLeader, task.startBoottime, task.selfExecID}
	if exe != nil {
		offs = append(offs, exe.mm, exe.exeFile, exe.fInode, exe.iIno, exe.fFlags, exe.fPathMnt)
	}
	for _, o := range offs {
		if o > math.MaxInt16 {
			return false
		}
	}
	return true
}

// sizeOf is the load size of a member of size bytes (4 or 8).
func sizeOf(size uint8) asm.Size {
	if size == 4 {
		return asm.Word
	}
	return asm.DWord
}

// noTaskBTF has attachCgroupHooks load the hooks as for a kernel that refuses
// bpf_get_current_task_btf in them (tests).
var noTaskBTF bool

// exeLoadErr, when set, is the error attachCgroupHooks gets for every program
// that reads the executable, as from a kernel whose verifier refuses it
// (tests).
var exeLoadErr error

// attachCgroupHooks loads the map and programs and attaches them to cgroupPath ("" :
// the cgroup2 mount). On error nothing stays loaded or attached.
func attachCgroupHooks(cgroupPath string, entries int) (h *cgroupHooks, err error) {
	if cgroupPath == "" {
		var release func()
		if cgroupPath, release, err = cgroup2.Root("latch-cgroup2-"); err != nil {
			return nil, err
		}
		defer release()
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK for eBPF: %w", err)
	}
	h = &cgroupHooks{}
	defer func() {
		if err != nil {
			h.close()
			h = nil
		}
	}()
	h.conns, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "latch_conns",
		Type:       ebpf.LRUHash,
		KeySize:    8,
		ValueSize:  connRecordSize,
		MaxEntries: uint32(entries),
	})
	if err != nil {
		return h, fmt.Errorf("create eBPF LRU hash map of %d entries: %w", entries, err)
	}
	// The programs that identify the process need BTF and, for bpf_get_current_task
	// and bpf_probe_read_kernel, CAP_PERFMON; without them the records carry no
	// identity and Resolve checks the process in /proc instead.
	var task *taskFields
	var exe *exeFields
	if f, err := kernelTaskFields(); err != nil {
		h.exeWhy = fmt.Sprintf("the hooks cannot read the process: %v", err)
	} else {
		task = &f
		if e, err := kernelExeFields(); err != nil {
			h.exeWhy = fmt.Sprintf("the hooks cannot read the executable: %v", err)
		} else {
			exe = &e
		}
	}
	// Recent kernels let every program type of a loader with CAP_PERFMON follow
	// the current task's BTF pointers (bpf_get_current_task_btf): plain loads
	// instead of a bpf_probe_read_kernel call each.
	btfTask := task != nil && !noTaskBTF && fitLoads(task, exe) &&
		features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetCurrentTaskBtf) == nil
	for _, at := range hookedAttachTypes {
		load := func(task *taskFields, exe *exeFields) (*ebpf.Program, error) {
			if exe != nil && exeLoadErr != nil {
				return nil, exeLoadErr
			}
			return ebpf.NewProgram(&ebpf.ProgramSpec{
				Name:         "latch_sockaddr",
				Type:         ebpf.CGroupSockAddr,
				AttachType:   at,
				Instructions: hookProgram(h.conns, task, exe, btfTask),
				License:      "Dual MIT/GPL",
			})
		}
		prog, err := load(task, exe)
		if err != nil && btfTask && len(h.progs) == 0 {
			btfTask = false
			prog, err = load(task, exe)
		}
		if err != nil && exe != nil && len(h.progs) == 0 {
			h.exeWhy = fmt.Sprintf("the kernel refused the hooks' program that reads the executable: %v", err)
			exe = nil
			prog, err = load(task, nil)
		}
		if err != nil && task != nil && len(h.progs) == 0 {
			if h.exeWhy == "" {
				h.exeWhy = fmt.Sprintf("the kernel refused the hooks' program that reads the process: %v", err)
			}
			task = nil
			prog, err = load(nil, nil)
		}
		if err != nil {
			return h, fmt.Errorf("load eBPF program for %v: %w", at, err)
		}
		h.identifies = task != nil
		h.btfTask = btfTask
		h.knowsExe = exe != nil
		if h.knowsExe {
			h.exeWhy = ""
		}
		h.progs = append(h.progs, prog)
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: at, Program: prog})
		if err != nil {
			return h, fmt.Errorf("attach eBPF program to cgroup %s at %v: %w", cgroupPath, at, err)
		}
		h.links = append(h.links, l)
	}
	return h, nil
}

// mapLookupAttr is the BPF_MAP_LOOKUP_ELEM layout of union bpf_attr (the key and
// value pointers are __aligned_u64; pointers here so that the collector sees them).
type mapLookupAttr struct {
	mapFD uint32
	_     uint32
	key   unsafe.Pointer
	value unsafe.Pointer
	flags uint64
}

// lookup returns the record of the socket with this cookie. It is on the path of
// every attributed connection and DNS query: one bpf(2) call made directly, which
// spares ebpf.Map.Lookup's marshalling of key and value (two allocations and about
// 0.3 µs a call, BenchmarkHooksLookup). A hash map lookup never sleeps, so the call
// need not tell the scheduler. The caller holds the Resolver's life lock, so the
// map's descriptor stays open.
func (h *cgroupHooks) lookup(cookie uint64) (connRecord, bool) {
	var rec connRecord
	attr := mapLookupAttr{mapFD: uint32(h.conns.FD()), key: unsafe.Pointer(&cookie), value: unsafe.Pointer(&rec)}
	_, _, errno := unix.RawSyscall(unix.SYS_BPF, unix.BPF_MAP_LOOKUP_ELEM, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return connRecord{}, false
	}
	return rec, true
}

// close detaches the programs and frees the map. Safe on a partial h.
func (h *cgroupHooks) close() error {
	var errs []error
	for _, l := range h.links {
		errs = append(errs, l.Close())
	}
	for _, p := range h.progs {
		errs = append(errs, p.Close())
	}
	if h.conns != nil {
		errs = append(errs, h.conns.Close())
	}
	h.links, h.progs, h.conns = nil, nil, nil
	return errors.Join(errs...)
}
