package main

// The verbs of running latch as a system service. This init runs after main.go's,
// which makes the verbs map: Go initializes a package's files in the order the build
// presents them, sorted by name.
func init() {
	verbs["config"] = verb{runConfig, configHelp}
	verbs["boot-protect"] = verb{runBootProtect, bootProtectHelp}
	verbs["completion"] = verb{runCompletion, completionHelp}
	verbs["reload"] = verb{runReload, reloadHelp}
}
