# Every target creates .venv when it is missing, so a fresh machine with only Python 3.11 works.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.compiled
SOURCES := setup.py $(shell find src -name '*.py')

.PHONY: install run test lint bench bench-tools outages soak fuzz fuzz-long clean test-tools

install: $(BUILT)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 (or python3 >= 3.11) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The directory's hot path compiled by mypyc, in place (setup.py names the modules), once
# the dependencies whose types it reads are installed; again after any source changed.
# (The old .so files go first: one left from a module no longer listed would still be
# imported instead of its source.)
$(BUILT): $(STAMP) $(SOURCES)
	find src -name '*.so' -delete
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(BUILT)

# The directory server on HOST:PORT; the README shows how two users join it.
HOST ?= 127.0.0.1
PORT ?= 5555
run: $(BUILT)
	$(BIN)/whatsap2p server --host $(HOST) --port $(PORT)

# The whole suite on the compiled build, then the tests of the compiled modules (protocol, net,
# server, the loadgen's users) once more on their Python source, as a plain `pip install .`
# runs them: a copy of the package without the compiled modules, first on the path.
PURE := .run/pure
test: $(BUILT) test-tools
	$(BIN)/python -m pytest
	rm -rf $(PURE) && mkdir -p $(PURE) && cp -r src/whatsap2p $(PURE)/
	find $(PURE) -name '*.so' -delete
	PYTHONPATH=$(PURE) $(BIN)/python -m pytest tests/protocol tests/net tests/server tests/ui/test_loadgen_users.py

# The wire-privacy test captures loopback traffic with tcpdump, the terminal UI is driven
# on a real terminal in tmux, the shared directory runs on a real redis-server (each
# test run starts its own on a free loopback port), the NAT test bed's home routers are
# iptables in network namespaces; install them when missing (iptables lives in /usr/sbin,
# off a user's PATH).
TEST_TOOLS := tcpdump tmux redis-server iptables
test-tools:
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	test -z "$$missing" || { \
	  echo "installing$$missing (needed by the tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	  || { echo "cannot install$$missing: install them (needs root), then run make test again"; exit 1; }; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench fuzz setup.py
	$(BIN)/ruff format --check src tests bench fuzz setup.py
	$(BIN)/mypy

bench: $(BUILT) bench-tools
	$(BIN)/python bench/run.py --out bench/RESULTS.md

# The outside baselines of `make bench`: scp and redis-benchmark from Debian's packages,
# magic-wormhole (with its mailbox server and transit relay) in a venv of its own.
# Best effort: without them the report names the baseline it could not measure.
WORMHOLE_VENV := .run/wormhole-venv
bench-tools:
	@command -v redis-benchmark >/dev/null 2>&1 && test -x /usr/sbin/sshd || { \
	  echo "installing redis-server and openssh-server (baselines for make bench)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    redis-server openssh-server openssh-client >/dev/null; } \
	  || echo "could not install them: the report will say which baselines are missing"; }
	@test -x $(WORMHOLE_VENV)/bin/wormhole || { \
	  echo "installing magic-wormhole (a baseline for make bench)"; \
	  { $(PYTHON) -m venv $(WORMHOLE_VENV) && $(WORMHOLE_VENV)/bin/pip install -q \
	    magic-wormhole==0.24.0 magic-wormhole-mailbox-server==0.8.0 \
	    magic-wormhole-transit-relay==0.5.0; } \
	  || echo "could not install magic-wormhole: the report will say so"; }

# Coverage-guided fuzzing (atheris) of every parser of untrusted input, FUZZ_SECONDS per
# harness, one after the other, on the Python source (a copy without the compiled modules
# in .run/fuzz-src: atheris cannot instrument mypyc's), each on its corpus in
# .run/fuzz-corpus/NAME, kept between runs; crashes are saved in fuzz/findings/, which
# tests/test_fuzz_findings.py replays. FUZZ_ONLY="photo trust" runs some. One core at a
# time; fuzz-long: one CPU-hour per harness.
FUZZ_SECONDS ?= 60
FUZZ_ONLY ?=
fuzz: $(BUILT)
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS) $(if $(FUZZ_ONLY),--only $(FUZZ_ONLY))

fuzz-long:
	$(MAKE) fuzz FUZZ_SECONDS=3600

# What each fault of a two-server deployment costs (Sentinel failover, a frozen replica,
# a frozen or killed server, Redis restarted), measured with the real commands; the
# table goes to bench/OUTAGES.md, which docs/deployment.md quotes. About 3 minutes.
outages: $(BUILT) bench-tools
	$(BIN)/python bench/outages.py --out bench/OUTAGES.md

# 10,000 queued messages while the receiver is killed twice and the server restarted.
soak: $(BUILT)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache build
	find src -name '*.so' -delete
