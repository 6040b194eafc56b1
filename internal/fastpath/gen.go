package fastpath

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -tags linux -type fp_key -type fp_verdict -type fp_event -type fp_end -type fp_live -type fp_tuple -type fp_pin_move fastpath bpf/fastpath.c
