# Everything a fresh machine needs, in two commands:  make demo   and   make test
# (Python 3.11+ with pip; apt-get for Chromium when run as root.)
PYTHON ?= python3
VENV ?= .venv
RUNTIME_VENV ?= .venv-runtime
FLOORS_VENV ?= .venv-floors
# make serve BUNDLE=DIR
BUNDLE ?= bundles/demo
PY := $(VENV)/bin/python
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off -q

.PHONY: help venv runtime-venv floors-venv system-deps lint typecheck test test-fast test-runtime-only \
	test-runtime-floors demo serve serve-bundle clean

help:
	@echo "make demo      - build the demo model through the real pipeline, then serve http://127.0.0.1:8000"
	@echo "make test      - install everything, then lint, type-check and run the whole test suite"
	@echo "make test-fast - the test suite without the slow tests (no lint, no type-check)"
	@echo "make serve     - serve a built bundle on http://127.0.0.1:8000 (BUNDLE=DIR, default bundles/demo)"

# Each step says what it does; a failure ends with one line naming the step (pip's own reason is above it).
STEP_FAILED = { echo "make: step 'environment' failed: $(1)" >&2; exit 1; }
# The openvino extra (SKIN_OPENVINO) is offered on x86-64 only: there its tests must run, elsewhere they skip.
ifeq ($(shell uname -m),x86_64)
OPENVINO_EXTRA := ,openvino
REQUIRE_OPENVINO := SKIN_REQUIRE_OPENVINO=1
endif
ALL_EXTRAS := runtime$(OPENVINO_EXTRA),train,bench,dev,deploy-checks
RUNTIME_EXTRAS := runtime,dev

$(VENV)/.installed: pyproject.toml
	@echo "==> environment: $(VENV) with all extras (torch is large: a few minutes on a fresh machine) …"
	@$(PYTHON) -m venv $(VENV) || $(call STEP_FAILED,$(PYTHON) -m venv $(VENV) (Debian: apt-get install python3-venv))
	@$(PY) -m pip install $(PIP_FLAGS) --upgrade pip || $(call STEP_FAILED,upgrading pip)
	@$(PY) -m pip install $(PIP_FLAGS) -e ".[$(ALL_EXTRAS)]" || $(call STEP_FAILED,pip install -e .[$(ALL_EXTRAS)])
	@touch $@
	@echo "    environment ready"

venv: $(VENV)/.installed

# The serving image's dependency set alone (no torch), at the image's pinned versions: proves the runtime and
# its tests need nothing more, and tests the versions the image ships (runtime/protocol.py extends uvicorn's).
$(RUNTIME_VENV)/.installed: pyproject.toml deploy/runtime-constraints.txt
	@echo "==> environment: $(RUNTIME_VENV) with the runtime extra only (no torch) …"
	@$(PYTHON) -m venv $(RUNTIME_VENV) || $(call STEP_FAILED,$(PYTHON) -m venv $(RUNTIME_VENV))
	@$(RUNTIME_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip || $(call STEP_FAILED,upgrading pip)
	@$(RUNTIME_VENV)/bin/python -m pip install $(PIP_FLAGS) -c deploy/runtime-constraints.txt -e ".[$(RUNTIME_EXTRAS)]" \
		|| $(call STEP_FAILED,pip install -c deploy/runtime-constraints.txt -e .[$(RUNTIME_EXTRAS)])
	@touch $@

runtime-venv: $(RUNTIME_VENV)/.installed

# The runtime extra at the oldest versions pyproject.toml allows (.ci/floors.py turns each >= into ==), the dev
# extra's test tools at their newest that fit: proves those floors still hold. --clear: nothing left over from
# floors before.
$(FLOORS_VENV)/.installed: pyproject.toml .ci/floors.py
	@echo "==> environment: $(FLOORS_VENV) with the runtime extra at its floors (no torch) …"
	@$(PYTHON) -m venv --clear $(FLOORS_VENV) || $(call STEP_FAILED,$(PYTHON) -m venv --clear $(FLOORS_VENV))
	@$(FLOORS_VENV)/bin/python .ci/floors.py runtime > $(FLOORS_VENV)/floors.txt \
		|| $(call STEP_FAILED,.ci/floors.py runtime (the runtime extra's floors))
	@$(FLOORS_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip || $(call STEP_FAILED,upgrading pip)
	@$(FLOORS_VENV)/bin/python -m pip install $(PIP_FLAGS) -c $(FLOORS_VENV)/floors.txt -e ".[$(RUNTIME_EXTRAS)]" \
		|| $(call STEP_FAILED,pip install -c $(FLOORS_VENV)/floors.txt -e .[$(RUNTIME_EXTRAS)])
	@touch $@

floors-venv: $(FLOORS_VENV)/.installed

# Chromium for the browser tests (Debian package; Playwright cannot download its own here), nginx and
# openssl for the reverse-proxy test.
# The plain nginx package, not a flavour such as nginx-light, which newer Debian releases may not carry.
SYSTEM_PACKAGES := chromium nginx openssl
system-deps:
	@if [ ! -x /usr/bin/chromium ] || ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
		else echo "missing system packages: run 'sudo apt-get install $(SYSTEM_PACKAGES)' for the browser and proxy tests"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy runtime export training

test-runtime-only: runtime-venv
	! $(RUNTIME_VENV)/bin/python -c "import torch" 2>/dev/null
	$(RUNTIME_VENV)/bin/python -m pytest tests/runtime -q -p no:cacheprovider

test-runtime-floors: floors-venv
	! $(FLOORS_VENV)/bin/python -c "import torch" 2>/dev/null
	$(FLOORS_VENV)/bin/python -m pytest tests/runtime -q -p no:cacheprovider

test: system-deps venv lint typecheck test-runtime-only test-runtime-floors
	$(REQUIRE_OPENVINO) $(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

demo: venv
	$(VENV)/bin/skin-demo

# The bundle is checked first: on a fresh clone, before minutes of pip install, say how to get one.
serve: serve-bundle venv
	$(VENV)/bin/skin-serve --bundle $(BUNDLE)

serve-bundle:
	@[ -e "$(BUNDLE)" ] || { echo "make serve: no bundle at '$(BUNDLE)': build one with 'make demo', or pass BUNDLE=DIR" >&2; exit 2; }

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(FLOORS_VENV) .pytest_cache .mypy_cache .ruff_cache
