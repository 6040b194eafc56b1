package events

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"
)

// File sink defaults.
const (
	DefaultFileMaxSize = 100 << 20 // bytes before rotation
	DefaultFileKeep    = 5         // rotated files kept: PATH.1 (newest) ... PATH.5
	// FileSyncInterval is the fsync policy: the file is fsynced at most this long
	// after a write, on rotation and on close. A crash of the machine (not of latch:
	// written lines are in the kernel at once) loses at most this much.
	FileSyncInterval = time.Second
)

// FileSink writes JSON lines to a file, rotating it by size: when a line would take
// it past MaxSize, PATH becomes PATH.1, PATH.1 becomes PATH.2 and so on up to Keep,
// and a new PATH starts. Every line is written whole; a rotated file ends with a
// complete line.
type FileSink struct {
	Path    string
	MaxSize int64 // 0: DefaultFileMaxSize
	Keep    int   // 0: DefaultFileKeep
	Logf    func(string, ...any)

	f     *os.File
	w     *bufio.Writer
	size  int64
	dirty bool
}

// OpenFileSink opens (appending to) path, so that a bad path is an error at start.
func OpenFileSink(path string, maxSize int64, keep int, logf func(string, ...any)) (*FileSink, error) {
	if maxSize <= 0 {
		maxSize = DefaultFileMaxSize
	}
	if keep <= 0 {
		keep = DefaultFileKeep
	}
	s := &FileSink{Path: path, MaxSize: maxSize, Keep: keep, Logf: logf}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

// Name is "file".
func (s *FileSink) Name() string { return "file" }

func (s *FileSink) open() error {
	f, err := os.OpenFile(s.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("events file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("events file: %w", err)
	}
	s.f, s.w, s.size = f, bufio.NewWriterSize(f, 256<<10), st.Size()
	return nil
}

func (s *FileSink) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Run implements Sink.
func (s *FileSink) Run(lines <-chan []byte, c *Counters) {
	tick := time.NewTicker(FileSyncInterval)
	defer tick.Stop()
	defer s.closeFile()
	var pending uint64 // lines in the buffer, counted as sent once flushed
	flush := func() {
		if s.w == nil || pending == 0 {
			return
		}
		if err := s.w.Flush(); err != nil {
			s.logf("events file %s: %v", s.Path, err)
			c.Dropped.Add(pending)
			s.w.Reset(s.f)
		} else {
			c.Sent.Add(pending)
			s.dirty = true
		}
		pending = 0
	}
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				flush()
				return
			}
			if s.w == nil && s.open() != nil { // reopen after a failure
				c.Dropped.Add(1)
				continue
			}
			if s.size > 0 && s.size+int64(len(line))+1 > s.MaxSize {
				flush()
				if err := s.rotate(); err != nil {
					s.logf("events file %s: rotating: %v", s.Path, err)
				}
				if s.w == nil {
					c.Dropped.Add(1)
					continue
				}
			}
			s.w.Write(line)
			s.w.WriteByte('\n')
			s.size += int64(len(line)) + 1
			pending++
			if len(lines) == 0 { // write a batch out when the queue is empty, then wait for more
				flush()
				time.Sleep(Coalesce)
			}
		case <-tick.C:
			flush()
			if s.dirty && s.f != nil {
				s.f.Sync()
				s.dirty = false
			}
		}
	}
}

func (s *FileSink) closeFile() {
	if s.f == nil {
		return
	}
	s.w.Flush()
	s.f.Sync()
	s.f.Close()
	s.f, s.w = nil, nil
}

// rotate shifts PATH.(n-1) to PATH.n, ..., PATH to PATH.1, and opens a new PATH.
func (s *FileSink) rotate() error {
	s.closeFile()
	os.Remove(s.Path + "." + strconv.Itoa(s.Keep))
	for i := s.Keep - 1; i >= 1; i-- {
		os.Rename(s.Path+"."+strconv.Itoa(i), s.Path+"."+strconv.Itoa(i+1))
	}
	if err := os.Rename(s.Path, s.Path+".1"); err != nil {
		s.open()
		return err
	}
	return s.open()
}
