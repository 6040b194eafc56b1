// Package packaging holds what installs latch as a system service: the systemd units
// (latch.service, latch-boot.service), the default configuration file, the Debian
// maintainer scripts, and the package builder (packaging/build, driven by `make
// package`). Its tests check the units with systemd-analyze and the packages with
// dpkg and lintian.
package packaging
