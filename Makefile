# fedslim — top-level driver. `make demo` and `make check` are the two commands a new user runs.
#   deps   install missing Debian packages (scripts/install-deps.sh)
#   build  optimised build in build/ (binaries in build/bin/)
#   check  -Werror + AddressSanitizer/UndefinedBehaviorSanitizer build in build/check, all tests,
#          then the libFuzzer targets (clang) in build/fuzz for a bounded time, then (as root)
#          check-netns
#   check-netns  multi-host rehearsal in network namespaces on build/check's binaries
#          (tests/test_netns.sh); skips with a message when not root or without `ip netns`
#   demo   build, then run the demo job (scripts/demo.sh)
#   bench  build, then run the benchmarks; writes bench/results.json
#   bench-fewshot  build, then the few-shot quality table on the Fashion-MNIST teacher (drop-blocks,
#          prune-channels, int8 at 100/500 shots; bench/fewshot.sh; slow), into bench/results.json
#   package  build with prefix /usr, then cpack: build/fedslim_<version>_amd64.deb (packaging/)
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build check check-unit check-fuzz check-netns demo bench bench-fewshot package clean

all: build

deps:
	@./scripts/install-deps.sh

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFEDSLIM_WERROR=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build build -j$(JOBS)

check: deps check-unit check-fuzz check-netns

check-unit:
	cmake -S . -B build/check -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFEDSLIM_WERROR=ON \
	      -DFEDSLIM_SANITIZE=address,undefined $(CMAKE_FLAGS) >/dev/null
	cmake --build build/check -j$(JOBS)
	cd build/check && ctest --output-on-failure -j$(JOBS) -LE 'fuzz|netns'

check-fuzz:
	cmake -S . -B build/fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	      -DFEDSLIM_FUZZ=ON -DFEDSLIM_SANITIZE=address,undefined $(CMAKE_FLAGS) >/dev/null
	cmake --build build/fuzz -j$(JOBS) --target fuzz_all
	cd build/fuzz && ctest --output-on-failure -j$(JOBS) -L fuzz

check-netns:
	@if [ "$$(id -u)" != 0 ]; then \
	    echo "check-netns: skipped: the multi-host rehearsal needs root (network namespaces)"; \
	elif ! ip netns list > /dev/null 2>&1; then \
	    echo "check-netns: skipped: 'ip netns' is not available"; \
	else \
	    cmake -S . -B build/check -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFEDSLIM_WERROR=ON \
	          -DFEDSLIM_SANITIZE=address,undefined $(CMAKE_FLAGS) > /dev/null && \
	    cmake --build build/check -j$(JOBS) --target fedslim fedslim-coordinator fedslim-agent fedslimctl && \
	    cd build/check && ctest -V --no-tests=error -L netns; \
	fi

demo: build
	./scripts/demo.sh

bench: build
	./bench/run.sh

bench-fewshot: build
	./bench/fewshot.sh

package: build
	cmake -S . -B build -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
	cmake --build build -j$(JOBS)
	cd build && cpack -G DEB

clean:
	rm -rf build
