package linux

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// queueStatus is one line of /proc/net/netfilter/nfnetlink_queue: a bound queue.
type queueStatus struct {
	Queue       uint16
	PortID      uint32 // netlink port id of the socket that bound it
	Waiting     uint64 // packets held, waiting for a verdict
	Dropped     uint64 // dropped by the kernel: queue full
	UserDropped uint64 // dropped by the kernel: netlink socket buffer full
}

const procQueuePath = "/proc/net/netfilter/nfnetlink_queue"

// boundQueues reads the queues bound in the current network namespace. A missing file
// (nfnetlink_queue not loaded) means none.
func boundQueues() (map[uint16]queueStatus, error) {
	b, err := os.ReadFile(procQueuePath)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseQueueStatus(b)
}

func parseQueueStatus(b []byte) (map[uint16]queueStatus, error) {
	qs := make(map[uint16]queueStatus)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) < 7 {
			return nil, fmt.Errorf("%s line %d: %d fields, want at least 7", procQueuePath, line, len(f))
		}
		var nums [7]uint64
		for i := range nums {
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s line %d field %d: %w", procQueuePath, line, i+1, err)
			}
			nums[i] = n
		}
		qs[uint16(nums[0])] = queueStatus{
			Queue:       uint16(nums[0]),
			PortID:      uint32(nums[1]),
			Waiting:     nums[2],
			Dropped:     nums[5],
			UserDropped: nums[6],
		}
	}
	return qs, sc.Err()
}
