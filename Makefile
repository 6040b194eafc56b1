# latch: `make package` builds the .deb and .rpm into dist/ (nfpm, from Go).
VERSION ?= 0.1.0
DIST ?= dist

.PHONY: package build clean

build:
	go build -o latch ./cmd/latch

package:
	go run ./packaging/build -version $(VERSION) -out $(DIST)

clean:
	rm -rf $(DIST) latch
