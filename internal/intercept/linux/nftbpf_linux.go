package linux

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// The nftables rule that runs the kernel fast path's UDP match (an xt_bpf match,
// through nft_compat) cannot be written in nft's language: nft can list it but
// not add it. addNftBPFMatch adds it over netlink, as iptables-nft adds its own
// xt matches.

// xt_bpf's struct xt_bpf_info_v1: mode, program length, fd, then a union of the
// classic program and the pinned path (512 bytes), then the kernel's pointer.
const (
	xtBPFModePinned = 1 // XT_BPF_MODE_FD_PINNED
	xtBPFPathMax    = 512
	xtBPFInfoSize   = 2 + 2 + 4 + xtBPFPathMax + 8
)

// xtBPFInfo returns the match's info for a program pinned at path.
func xtBPFInfo(path string) ([]byte, error) {
	if len(path) >= xtBPFPathMax || path == "" {
		return nil, fmt.Errorf("xt_bpf: pinned path %q: want 1 to %d bytes", path, xtBPFPathMax-1)
	}
	info := make([]byte, xtBPFInfoSize)
	binary.NativeEndian.PutUint16(info[0:], xtBPFModePinned)
	copy(info[8:], path)
	return info, nil
}

// nftGoto is NFT_GOTO (-4) as the kernel reads it.
const nftGoto = 0xfffffffc

// nlAttr appends one netlink attribute (padded to 4 bytes) to b.
func nlAttr(b []byte, typ uint16, val []byte) []byte {
	l := 4 + len(val)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func nlNested(b []byte, typ uint16, inner []byte) []byte {
	return nlAttr(b, typ|unix.NLA_F_NESTED, inner)
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// nfMsg appends a netlink message with an nfgenmsg header to b.
func nfMsg(b []byte, typ, flags uint16, seq uint32, family uint8, resID uint16, attrs []byte) []byte {
	l := unix.NLMSG_HDRLEN + 4 + len(attrs)
	b = binary.NativeEndian.AppendUint32(b, uint32(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, family, unix.NFNETLINK_V0)
	b = binary.BigEndian.AppendUint16(b, resID)
	return append(b, attrs...)
}

// nftBPFRuleBatch returns the netlink batch that appends to chain of table inet
// table a rule: match the xt_bpf program pinned at path, then goto chain target.
func nftBPFRuleBatch(table, chain, target, path string) ([]byte, error) {
	info, err := xtBPFInfo(path)
	if err != nil {
		return nil, err
	}
	var match []byte
	match = nlAttr(match, unix.NFTA_MATCH_NAME, cstr("bpf"))
	match = nlAttr(match, unix.NFTA_MATCH_REV, be32(1))
	match = nlAttr(match, unix.NFTA_MATCH_INFO, info)
	var verdict []byte
	verdict = nlAttr(verdict, unix.NFTA_VERDICT_CODE, be32(nftGoto))
	verdict = nlAttr(verdict, unix.NFTA_VERDICT_CHAIN, cstr(target))
	var data []byte
	data = nlNested(data, unix.NFTA_DATA_VERDICT, verdict)
	var imm []byte
	imm = nlAttr(imm, unix.NFTA_IMMEDIATE_DREG, be32(unix.NFT_REG_VERDICT))
	imm = nlNested(imm, unix.NFTA_IMMEDIATE_DATA, data)
	elem := func(name string, data []byte) []byte {
		var e []byte
		e = nlAttr(e, unix.NFTA_EXPR_NAME, cstr(name))
		e = nlNested(e, unix.NFTA_EXPR_DATA, data)
		return e
	}
	var exprs []byte
	exprs = nlNested(exprs, unix.NFTA_LIST_ELEM, elem("match", match))
	exprs = nlNested(exprs, unix.NFTA_LIST_ELEM, elem("immediate", imm))
	var rule []byte
	rule = nlAttr(rule, unix.NFTA_RULE_TABLE, cstr(table))
	rule = nlAttr(rule, unix.NFTA_RULE_CHAIN, cstr(chain))
	rule = nlNested(rule, unix.NFTA_RULE_EXPRESSIONS, exprs)
	var b []byte
	b = nfMsg(b, unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, 1, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	b = nfMsg(b, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_APPEND|unix.NLM_F_ACK, 2, unix.NFPROTO_INET, 0, rule)
	b = nfMsg(b, unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, 3, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	return b, nil
}

// addNftBPFMatch appends to chain of table inet table a rule that runs the
// socket filter program pinned at path (xt_bpf) and, on a match, goes to chain
// target.
func addNftBPFMatch(table, chain, target, path string) error {
	batch, err := nftBPFRuleBatch(table, chain, target, path)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("nftables netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind the nftables netlink socket: %w", err)
	}
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Sendto(fd, batch, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send the xt_bpf rule to nftables: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("read nftables' answer to the xt_bpf rule: %w", err)
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return errors.New("nftables' answer to the xt_bpf rule: bad message length")
			}
			typ, seq, data := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:]), b[unix.NLMSG_HDRLEN:l]
			b = b[min((l+3)&^3, len(b)):]
			if typ != unix.NLMSG_ERROR || seq != 2 {
				continue
			}
			if len(data) < 4 {
				return errors.New("nftables' answer to the xt_bpf rule: short error message")
			}
			if e := int32(binary.NativeEndian.Uint32(data)); e != 0 {
				return fmt.Errorf("nftables refused the xt_bpf rule (in %s %s, program %s): %w", table, chain, path, unix.Errno(-e))
			}
			return nil
		}
	}
}
