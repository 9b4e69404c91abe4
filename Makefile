# pysandbox: one command to try it (make demo), one to test it (make test).
# Every target installs what it needs; nothing is assumed to be on the machine
# beyond Debian 12 and root.

PY        := /usr/bin/python3
VENV      := .venv
VPY       := $(VENV)/bin/python
BIN       := $(VENV)/bin/pysandbox
APT_PKGS  := busybox-static runc crun runsc python3-venv python3-dev libseccomp2 gcc libc6-dev iproute2 procps docker.io containerd podman iptables debootstrap
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PIP := $(VENV)/.pip-stamp
BUNDLE    := build/bundle

.PHONY: all setup demo test lint typecheck pytest bench docs clean

all: setup

$(STAMP_APT): Makefile
	@mkdir -p $(VENV)
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml requirements-dev.txt
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The fast launcher replaces pip's console script (see scripts/write_launcher.py);
# the package is byte-compiled once so no start pays for compiling.
$(BIN): $(STAMP_PIP) scripts/write_launcher.py
	$(VPY) scripts/write_launcher.py $(BIN)
	@$(VPY) -m compileall -q pkg oci sentry syscalls gofer policies >/dev/null

setup: $(STAMP_PIP) $(BIN)
	@$(VPY) -m compileall -q pkg oci sentry syscalls gofer policies >/dev/null

DEMO_SCRIPT := echo "hello from $$(hostname), pid $$$$ in its own pid namespace"; \
	echo "uid: $$(id -u), capabilities: $$(grep CapEff /proc/self/status)"; \
	echo "root is read-only:"; touch /probe 2>&1; \
	echo "mounts:"; cut -d" " -f2,3 /proc/mounts | head -8

# Runs a real container from the embedded busybox-static bundle.
demo: setup
	@$(BIN) bundle --force $(BUNDLE) /bin/sh -c '$(DEMO_SCRIPT)' >/dev/null
	$(BIN) run --bundle $(BUNDLE) demo-$$$$

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow the editable install's import hook: give it a tree where
# the folders sit under their installed names.
build/typing/pysandbox/__init__.py:
	@mkdir -p build/typing/pysandbox
	@ln -sfn ../../../pkg/__init__.py build/typing/pysandbox/__init__.py
	@for d in oci sentry syscalls gofer policies; do ln -sfn ../../../$$d build/typing/pysandbox/$$d; done

typecheck: setup build/typing/pysandbox/__init__.py
	$(VENV)/bin/mypy build/typing/pysandbox/__init__.py \
		$(addprefix build/typing/pysandbox/,$(shell find oci sentry syscalls gofer policies -name '*.py')) \
		tests $(wildcard scripts/*.py)

pytest: setup
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: setup
	$(VPY) scripts/bench.py --write docs/benchmarks.md

docs: setup
	$(VPY) scripts/gen_compat.py docs/compatibility.md

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
