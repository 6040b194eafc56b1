module github.com/latchfw/latch

go 1.26
