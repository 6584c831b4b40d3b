# The project's command contract:
#   make demo   the main job on built-in sample data
#   make test   every test tier (installs what it needs: apt and pip)
#   make e2e    the end-to-end tier alone
#   make bench  the benchmarks
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := qemu-utils e2fsprogs fdisk openssl rabbitmq-server shellcheck \
	etcd-server

.PHONY: demo test unit e2e bench lint venv system-deps clean

$(STAMP): setup.cfg setup.py requirements.txt test-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . -r test-requirements.txt
	touch $@

venv: $(STAMP)

system-deps:
	tools/install-system-deps $(SYSTEM_PACKAGES)

lint: venv
	$(BIN)/flake8 xenapinfs_driver tests bench tools

# Two pytest processes: cinder's in-process tests monkey-patch eventlet
# (see tests/conftest.py).
unit: system-deps venv
	$(BIN)/python -m pytest --tier=plain tests/unit
	$(BIN)/python -m pytest --tier=green tests/unit

e2e: system-deps venv
	$(BIN)/python -m pytest tests/e2e

# The end-to-end image tests and the plugin path's fault matrix run a
# second time with os-xenapi's own dom0 glance plugin answering instead of
# our stand-in.
test: system-deps venv lint
	$(BIN)/python -m pytest --tier=plain tests
	$(BIN)/python -m pytest --tier=green tests
	$(BIN)/python -m pytest --tier=plain --dom0-plugins=os-xenapi \
		tests/e2e/test_driver_e2e.py
	$(BIN)/python -m pytest --tier=green --dom0-plugins=os-xenapi \
		tests/unit/test_faults.py -k PluginImageFaults

demo: system-deps venv
	$(BIN)/python tools/demo.py $(ARGS)

bench: system-deps venv
	$(BIN)/python bench/bench_convert.py $(ARGS)
	$(BIN)/python bench/bench_pack.py $(ARGS)
	$(BIN)/python bench/bench_image_paths.py $(ARGS)
	$(BIN)/python bench/bench_qcow2_upload.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info build dist
