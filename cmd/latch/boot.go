package main

const bootProtectHelp = `Usage: latch boot-protect [daemon flags]

Installs, before the daemon starts, the firewall ruleset the daemon would install,
with nobody reading its queue: every new connection the daemon would hold is
dropped. latch-boot.service runs it at boot, ordered before network-pre.target, so
no program talks before latch decides. The daemon, when it starts, replaces the
ruleset in one transaction (no moment without it). 'latch cleanup' removes it.

It reads the daemon's configuration (--config, default /etc/latch/latch.toml) and
flags (--queue, --inbound, --exempt-loopback, --fail) so that its ruleset is the
daemon's. With --fail open it installs nothing: boot protection is off.
`
