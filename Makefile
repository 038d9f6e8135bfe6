# Build and test entry points; CI runs `make test` (see .ci/run).
# Everything runs from the .venv that scripts/setup.sh creates.

VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
SHIM := containerd-shim-reboot-v2
BINDIR := /usr/local/bin
PYTEST_FLAGS ?=
BENCH_ARGS ?=

.PHONY: setup proto install lint unit integration test demo bench

setup:
	scripts/setup.sh

proto: setup
	$(PY) scripts/gen_proto.py

# containerd looks shims up in its own PATH (protocol doc, section 1.1).
# A launcher of our own rather than pip's console script: `start` runs for
# every container, and -S (no site, no `re`) saves it ~15 ms.
install: setup
	$(PY) scripts/write_launcher.py $(BINDIR)/$(SHIM)

# All three checks run, so one report shows every problem.
lint: setup
	@rc=0; \
	$(VENV)/bin/ruff format --check . || rc=1; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/mypy || rc=1; \
	exit $$rc

unit: setup
	$(PY) -m pytest $(PYTEST_FLAGS) tests --ignore=tests/integration -m 'not integration'

integration: install
	$(PY) -m pytest $(PYTEST_FLAGS) tests/integration

# Run every suite even when one fails, then fail if any did.
test: install
	@failed=; \
	for target in lint unit integration; do \
		$(MAKE) --no-print-directory $$target || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: failed:$$failed" >&2; exit 1; fi

demo: install
	$(PY) scripts/demo.py

# rebootshim against containerd's runc shim on a private containerd (bench/);
# writes docs/benchmarks.md, or build/bench/ with BENCH_ARGS=--quick.
bench: install
	REBOOTSHIM_BENCH_COMMAND="make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
		$(PY) -m bench $(BENCH_ARGS)
