package procattr

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -tags linux -type dq_key -type dq_sender dnsquery bpf/dnsquery.c
