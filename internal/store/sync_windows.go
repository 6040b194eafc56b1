package store

// syncDir is a no-op on Windows: NTFS journals the rename (MoveFileEx with
// MOVEFILE_REPLACE_EXISTING) itself, and directories cannot be opened for flushing.
func syncDir(dir string) error { return nil }
