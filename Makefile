# The two set-up commands of the README: `make run` and `make test`.
# Each creates .venv with Python 3.11 and installs what it needs, then does its job.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test cluster system-packages lint unit bench mutants clean

# The browser tests drive Debian's Chromium (Playwright cannot download its own here);
# the CJK fonts make their Chinese screenshots and the sweep's charts readable (and the
# emoji font the emoji a model writes), and
# fontconfig's fc-list tells the tests which characters the fonts draw (no empty boxes); the
# store tests start their own PostgreSQL server from Debian's binaries, and nginx in front of two
# workers, and check the workers' systemd unit. Checked on every `make test`, and installed
# when one is missing: the tests fail without them.
SYSTEM_PACKAGES := chromium fonts-noto-cjk fonts-noto-color-emoji fonts-dejavu-core fontconfig \
	postgresql nginx-light systemd
# What `make cluster` runs besides the app.
CLUSTER_PACKAGES := postgresql nginx-light
WORKERS ?= 2
AXE := tests/a11y/node_modules/axe-core/axe.min.js
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3

# llama.cpp (inside llama-cpp-python) is compiled from source, for any x86-64 CPU with AVX2,
# FMA and F16C (Intel Haswell, 2013, and later; every AMD Zen), never with -march=native:
# a .venv or wheel moved to another machine still runs. AVX-512 is left out (few CPUs have
# it, and it was no faster here: see the README's "The CPU build" section), and AMX always:
# llama.cpp's AMX kernels fault with "Illegal instruction" (llama.cpp PR #26954, open).
# An operator with a fixed llama.cpp turns them back on with e.g.
#   make run LLAMA_CPU="-DGGML_NATIVE=ON"
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPU ?= -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON \
	-DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF \
	-DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# The multimodal library (mtmd) is not used by the app; leaving it out saves build time.
LLAMA_CMAKE_ARGS := $(strip $(LLAMA_CPU)) -DLLAVA_BUILD=OFF
# The wheel is built once per version and flags, into a folder named after both, and pip's
# own caches are bypassed: pip keys its wheel cache by the source alone, so it would hand
# back a wheel built with other flags (or -march=native, on another machine).
LLAMA_KEY := $(shell printf '%s' '$(LLAMA_CPP_PYTHON) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)
LLAMA_WHEELS ?= $(HOME)/.cache/chatllm/llama-cpp-python-$(LLAMA_CPP_PYTHON)-$(LLAMA_KEY)
LLAMA_STAMP := $(VENV)/.llama-$(LLAMA_KEY)

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	rm -rf $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps --no-cache-dir \
		--no-binary llama-cpp-python --wheel-dir $(LLAMA_WHEELS) \
		llama-cpp-python==$(LLAMA_CPP_PYTHON)
	printf '%s\n' '$(LLAMA_CMAKE_ARGS)' > $(LLAMA_WHEELS)/cmake-args.txt
	touch $@

# Installed by its file name, so no other wheel of that version (an index's, a cache's,
# a --find-links folder's) can take its place.
$(LLAMA_STAMP): $(LLAMA_WHEELS)/.built
	$(BIN)/pip install --no-deps --no-cache-dir --force-reinstall \
		$(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_PYTHON)-*.whl
	rm -f $(VENV)/.llama-*
	touch $@

$(VENV)/.app-installed: pyproject.toml constraints.txt $(LLAMA_STAMP) | $(BIN)/python
	$(BIN)/pip install -c constraints.txt -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt $(LLAMA_STAMP) | $(BIN)/python
	$(BIN)/pip install -c constraints.txt -e ".[test]"
	touch $@ $(VENV)/.app-installed

run: $(VENV)/.app-installed
	$(BIN)/chainlit run app.py --host $(HOST) --port $(PORT)

test: $(VENV)/.test-installed system-packages $(AXE) lint unit

# axe-core, from the npm registry (pinned in tests/a11y/package-lock.json), for the browser
# tests' accessibility checks; npm is the machine's, or Debian's where it has none.
$(AXE): tests/a11y/package.json tests/a11y/package-lock.json
	@command -v npm >/dev/null || ($(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends npm)
	npm ci --prefix tests/a11y --no-audit --no-fund
	touch $@

# PostgreSQL, the model server, $(WORKERS) app workers and nginx on $(PORT), all on this
# machine's loopback (deploy/cluster.py); Ctrl-C stops them.
$(VENV)/.cluster-installed: pyproject.toml constraints.txt $(LLAMA_STAMP) | $(BIN)/python
	$(BIN)/pip install -c constraints.txt -e ".[cluster]"
	touch $@ $(VENV)/.app-installed

cluster: $(VENV)/.cluster-installed
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(CLUSTER_PACKAGES)"
	$(BIN)/python -m deploy.cluster --workers $(WORKERS) --port $(PORT)

system-packages:
	@installed=$$(dpkg-query -W -f='$${Status}\n' $(SYSTEM_PACKAGES) 2>/dev/null \
		| grep -c 'install ok installed'); \
	if [ "$$installed" != "$(words $(SYSTEM_PACKAGES))" ]; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
			-y --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(VENV)/.test-installed $(AXE)
	$(BIN)/pytest

$(VENV)/.bench-installed: pyproject.toml constraints.txt $(LLAMA_STAMP) | $(BIN)/python
	$(BIN)/pip install -c constraints.txt -e ".[test,bench]"
	touch $@ $(VENV)/.test-installed $(VENV)/.app-installed

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/stream.py

# Not in CI: every small change to the modules with fast tests, and whether a test notices
# (tests/mutants.py; the survivors go to artifacts/mutants.md). About an hour on 2 cores.
mutants: $(VENV)/.test-installed
	$(BIN)/python tests/mutants.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
