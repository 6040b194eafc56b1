package procattr

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// hookVM runs a hook program (hookProgram) against a made-up kernel memory:
// the subset of eBPF the hooks use (64-bit mov and add, loads and stores,
// helper calls, the map pointer, exit), with the helpers they call. A read
// of memory nobody wrote gives 0, as bpf_probe_read_kernel's zero-fill and
// the verifier's BTF loads do. It tells what record the program writes for a
// task whose structs have the offsets the test chooses, which the running
// kernel's BTF cannot.
type hookVM struct {
	mem    map[uint64]byte
	task   uint64 // bpf_get_current_task(_btf)
	record []byte // the value given to bpf_map_update_elem
	regs   [11]uint64
}

func (vm *hookVM) put(addr uint64, size int, v uint64) {
	for i := range size {
		vm.mem[addr+uint64(i)] = byte(v >> (8 * i))
	}
}

func (vm *hookVM) get(addr uint64, size int) uint64 {
	var v uint64
	for i := range size {
		v |= uint64(vm.mem[addr+uint64(i)]) << (8 * i)
	}
	return v
}

func (vm *hookVM) run(t *testing.T, insns asm.Instructions) {
	t.Helper()
	const fp = 0x7fff_0000
	vm.regs = [11]uint64{}
	vm.regs[asm.RFP] = fp
	for pc, ins := range insns {
		op := ins.OpCode
		switch {
		case ins.IsLoadFromMap():
			vm.regs[ins.Dst] = 0xaaaa_0000 // the map
		case op.Class() == asm.ALU64Class && (op.ALUOp() == asm.Mov || op.ALUOp() == asm.Add):
			v := uint64(ins.Constant)
			if op.Source() == asm.RegSource {
				v = vm.regs[ins.Src]
			}
			if op.ALUOp() == asm.Mov {
				vm.regs[ins.Dst] = v
			} else {
				vm.regs[ins.Dst] += v
			}
		case op.Class() == asm.LdXClass && op.Mode() == asm.MemMode:
			vm.regs[ins.Dst] = vm.get(vm.regs[ins.Src]+uint64(int64(ins.Offset)), op.Size().Sizeof())
		case op.Class() == asm.StXClass && op.Mode() == asm.MemMode:
			vm.put(vm.regs[ins.Dst]+uint64(int64(ins.Offset)), op.Size().Sizeof(), vm.regs[ins.Src])
		case ins.IsBuiltinCall():
			r := &vm.regs
			switch fn := asm.BuiltinFunc(ins.Constant); fn {
			case asm.FnGetSocketCookie:
				r[0] = 0xc00c1e
			case asm.FnGetCurrentPidTgid:
				r[0] = 7<<32 | 8
			case asm.FnGetCurrentUidGid:
				r[0] = 9<<32 | 10
			case asm.FnKtimeGetBootNs:
				r[0] = 11
			case asm.FnGetCurrentComm:
				for i := range r[2] {
					vm.mem[r[1]+i] = "hook"[i%4]
				}
				r[0] = 0
			case asm.FnGetCurrentTask, asm.FnGetCurrentTaskBtf:
				r[0] = vm.task
			case asm.FnProbeReadKernel:
				for i := range r[2] {
					vm.mem[r[1]+i] = vm.mem[r[3]+i]
				}
				r[0] = 0
			case asm.FnMapUpdateElem:
				if r[1] != 0xaaaa_0000 || vm.get(r[2], 8) != 0xc00c1e {
					t.Fatalf("insn %d: map update of map %#x, key %#x", pc, r[1], vm.get(r[2], 8))
				}
				vm.record = make([]byte, connRecordSize)
				for i := range vm.record {
					vm.record[i] = vm.mem[r[3]+uint64(i)]
				}
				r[0] = 0
			default:
				t.Fatalf("insn %d: helper %v not emulated", pc, fn)
			}
			// The helpers clobber r1-r5: a program that relied on them would
			// be refused.
			for i := asm.R1; i <= asm.R5; i++ {
				r[i] = 0xdead_0000_0000_0000
			}
		case op.JumpOp() == asm.Exit:
			return
		default:
			t.Fatalf("insn %d: %v not emulated", pc, ins)
		}
	}
	t.Fatal("the program does not exit")
}

// TestHookProgramOffsets (review 32): the hooks read the executable's inode
// number, f_flags and mount id through four structs, each at the offset the
// kernel's BTF gives for its member. The variant that reads through
// bpf_probe_read_kernel (kernels that refuse bpf_get_current_task_btf in
// cgroup sock_addr programs) chose what to do at each step by comparing
// the offset with the members' offsets: where two of task_struct.mm,
// mm_struct.exe_file and file.f_inode have the same offset (nothing in the
// kernel keeps them apart), it read from the wrong struct, and recorded a
// wrong inode number and file flags. Both variants run here against structs
// laid out with those offsets equal and apart; each must record the
// executable's inode number, f_flags and mount id, and the task's identity.
// The mount id is read both ways (review33): the 8-byte mnt_id_unique (Linux
// 6.8+), whose high half must reach the record (an id past 2^32 is another
// mount's than its low half), and the 4-byte mnt_id of older kernels, whose
// neighbouring bytes must not.
func TestHookProgramOffsets(t *testing.T) {
	requireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: connRecordSize, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, lay := range []struct {
		name string
		task taskFields
		exe  exeFields
	}{
		{"same offsets", taskFields{groupLeader: 0x48, startBoottime: 0x40, selfExecID: 0x50, execIDSize: 8},
			exeFields{mm: 0x40, exeFile: 0x40, fInode: 0x40, iIno: 0x40, inoSize: 8, fFlags: 0x48, fPathMnt: 0x10, mountMnt: 0x20, mountID: 0x10, mountIDSize: 4}},
		{"apart", taskFields{groupLeader: 0x4f8, startBoottime: 0x6a0, selfExecID: 0x868, execIDSize: 4},
			exeFields{mm: 0x570, exeFile: 0x3a8, fInode: 0x20, iIno: 0x40, inoSize: 4, fFlags: 0x34, fPathMnt: 0x40, mountMnt: 0x20, mountID: 0x11c, mountIDSize: 4}},
		// mnt_id_unique: the u64 after mnt_id (6.18's layout, mnt_id at 0x11c).
		{"same offsets/unique id", taskFields{groupLeader: 0x48, startBoottime: 0x40, selfExecID: 0x50, execIDSize: 8},
			exeFields{mm: 0x40, exeFile: 0x40, fInode: 0x40, iIno: 0x40, inoSize: 8, fFlags: 0x48, fPathMnt: 0x10, mountMnt: 0x20, mountID: 0x10, mountIDSize: 8}},
		{"apart/unique id", taskFields{groupLeader: 0x4f8, startBoottime: 0x6a0, selfExecID: 0x868, execIDSize: 4},
			exeFields{mm: 0x570, exeFile: 0x3a8, fInode: 0x20, iIno: 0x40, inoSize: 4, fFlags: 0x34, fPathMnt: 0x40, mountMnt: 0x20, mountID: 0x120, mountIDSize: 8}},
	} {
		const (
			taskAddr   = 0x1_0000_0000
			leaderAddr = 0x2_0000_0000
			mmAddr     = 0x3_0000_0000
			fileAddr   = 0x4_0000_0000
			inodeAddr  = 0x5_0000_0000
			mountAddr  = 0x6_0000_0000
			ino        = 0x1234_5678
			flags      = fmodeExec | 0x8000 // __FMODE_EXEC | O_LARGEFILE
			mntID      = 0x5_0000_004d      // mnt_id_unique; mnt_id's 4 bytes give 77
			startNs    = 555_000_000
			execID     = 3
		)
		for _, btfTask := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/btfTask=%v", lay.name, btfTask), func(t *testing.T) {
				vm := &hookVM{mem: map[uint64]byte{}, task: taskAddr}
				tf, ef := lay.task, lay.exe
				vm.put(taskAddr+uint64(tf.groupLeader), 8, leaderAddr)
				vm.put(taskAddr+uint64(ef.mm), 8, mmAddr)
				vm.put(leaderAddr+uint64(tf.startBoottime), 8, startNs)
				vm.put(leaderAddr+uint64(tf.selfExecID), int(tf.execIDSize), execID)
				vm.put(mmAddr+uint64(ef.exeFile), 8, fileAddr)
				vm.put(fileAddr+uint64(ef.fInode), 8, inodeAddr)
				vm.put(fileAddr+uint64(ef.fFlags), 4, flags)
				vm.put(fileAddr+uint64(ef.fPathMnt), 8, mountAddr+uint64(ef.mountMnt))
				// The id, then 0xff in the 4 bytes after it: a 4-byte mnt_id
				// is followed by other members.
				vm.put(mountAddr+uint64(ef.mountID), int(ef.mountIDSize), mntID)
				vm.put(mountAddr+uint64(ef.mountID)+uint64(ef.mountIDSize), 4, 0xffff_ffff)
				wantMnt := uint64(mntID)
				if ef.mountIDSize == 4 {
					wantMnt = mntID & 0xffff_ffff
				}
				vm.put(inodeAddr+uint64(ef.iIno), int(ef.inoSize), ino)
				if btfTask && !fitLoads(&tf, &ef) {
					t.Fatal("offsets too large for loads")
				}
				vm.run(t, hookProgram(m, &tf, &ef, btfTask))
				if len(vm.record) != connRecordSize {
					t.Fatal("the program wrote no record")
				}
				var rec connRecord
				copy(unsafe.Slice((*byte)(unsafe.Pointer(&rec)), connRecordSize), vm.record)
				want := connRecord{PidTgid: 7<<32 | 8, UIDGid: 9<<32 | 10, BootNs: 11, Comm: [16]byte([]byte("hookhookhookhook")),
					StartNs: startNs, ExecID: execID, ExeIno: ino, ExeFlags: flags, ExeMnt: wantMnt}
				if rec != want {
					t.Errorf("record %+v\nwant   %+v", rec, want)
				}
			})
		}
	}
}
