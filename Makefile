# kvmnetd: `make run` sets up and runs the daemon; `make test` sets up and runs every test.
# Both work on a fresh Debian 12 machine as root.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
APT_PACKAGES := iproute2 nftables qemu-system-x86 ipxe-qemu busybox-static dnsmasq-base \
	python3-venv curl libkmod2
# the commands those packages provide, to skip apt when everything is there
NEEDED_COMMANDS := ip nft qemu-system-x86_64 busybox dnsmasq curl

VAR ?= $(CURDIR)/var
RUN_ENV := KVMNETD_STATE_DIR=$(VAR)/lib/kvmnetd KVMNETD_RUN_DIR=$(VAR)/run/kvmnetd \
	KVMNETD_LISTEN=$${KVMNETD_LISTEN-127.0.0.1:8080}

QEMU_USER ?= kvmnetd-qemu

.PHONY: run test deps system-deps qemu-user lint unit openapi bench bench-vlans clean kernel-tier

run: deps qemu-user $(VAR)/lib/kvmnetd/kernel/vmlinuz
	$(RUN_ENV) $(BIN)/kvmnetd db upgrade
	$(RUN_ENV) exec $(BIN)/kvmnetd serve

# two pytest-xdist workers (the CI machine's two cores; tests/conftest.py says what keeps them
# apart); TEST_WORKERS=0 runs the session in one process; PYTEST_ARGS="--durations=60" adds to it
TEST_WORKERS ?= 2
test: deps qemu-user lint
	$(BIN)/pytest -ra -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# the kernel test tier's cache (tests/kernel/README.md): Debian's kernel, modules, kmod and an
# initramfs under tests/.cache/kernel/; pytest builds it on first use too. REFRESH=1 re-derives
# the kernel package from `apt-cache depends linux-image-amd64` instead of the pinned one. Then
# QEMU 10 for the qemu that boots the nested host (its emulated igb has SR-IOV), unpacked under
# tests/.cache/qemu/ through a private apt state, never installed (tests/kernel/outer_qemu.py).
kernel-tier: deps
	$(BIN)/python -m tests.kernel.build $(if $(REFRESH),--refresh)
	$(BIN)/python -m tests.kernel.outer_qemu

# the unprivileged user every qemu runs as by default (settings: qemu_user)
qemu-user:
	deploy/ensure-qemu-user $(QEMU_USER)

deps: system-deps $(STAMP)

system-deps:
	@missing=""; for c in $(NEEDED_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	ldconfig -p | grep -q 'libkmod\.so\.2 ' || missing="$$missing libkmod2"; \
	test -e /usr/lib/ipxe/qemu/efi-virtio.rom || missing="$$missing ipxe-qemu"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# a Debian guest kernel: lets the capability probe check whether KVM really boots guests
$(VAR)/lib/kvmnetd/kernel/vmlinuz:
	deploy/fetch-guest-kernel $(dir $@)

lint: deps
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/ruff format --check app tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

openapi: deps
	$(BIN)/kvmnetd openapi > openapi/openapi.json

bench: deps
	$(BIN)/python -m bench.taps
	$(BIN)/python -m bench.vms
	$(BIN)/python -m bench.forwards
	$(BIN)/python -m bench.port_security
	$(BIN)/python -m bench.scoping
	$(BIN)/python -m bench.neutron

# 100 VLANs x 10 taps on Debian's kernel (the kernel tier's nested host, bench/vlans.py): one
# boot, both backends, bounded by --timeout (90 min). Slow under TCG: 20 x 10 took ~20 min per
# backend on the shared 2-core machine; ARGS="--vlans 20 --profile" (where the time goes)
bench-vlans: deps
	$(BIN)/python -m bench.vlans $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
