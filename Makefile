# fnlb — every target creates and uses its own virtualenv in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# fnlb/v1: fnlb's protocol; fnlb/fn: fn's package-less RunnerProtocol service.
PROTOS := $(wildcard protos/fnlb/v1/*.proto) $(wildcard protos/fnlb/fn/*.proto)
PYTEST_ARGS ?=
# npm tools (buf) install into build/npm-tools from tools/npm's lock file;
# downloads are cached here across clean clones.
NPM_CACHE ?= $(HOME)/.cache/fnlb-npm
NPM_TOOLS := build/npm-tools
BUF := $(NPM_TOOLS)/node_modules/.bin/buf
# What `buf breaking` compares protos/ with; empty = automatic (see proto-lint).
BUF_AGAINST ?=

.PHONY: help install proto check-proto proto-lint test test-fast lint demo bench bench-placement bench-overload bench-mtls bench-sim bench-sim-overload bench-faults bench-scale clean

help:
	@echo "make demo             start an LB and 3 runner stubs, send calls, show results and metrics"
	@echo "make demo TLS=1       the same cluster over mutual TLS"
	@echo "make test             create .venv, check generated code, run the whole test suite"
	@echo "make test-fast        the suite without end-to-end tests marked slow"
	@echo "make bench            data-path benchmark: direct-to-runner vs through the LB"
	@echo "make bench-placement  placement benchmark: every placer on the same workload"
	@echo "make bench-overload   overload: wait queue vs NACK sweep (1x-8x, noisy neighbour, 2 LBs, burst)"
	@echo "make bench-mtls       the same cluster plaintext vs mutual TLS, side by side"
	@echo "make bench-sim        placement simulation at 1,000 runners (no processes)"
	@echo "make bench-sim-overload  simulated overload: fn's NACK sweep vs a wait queue, 1 and 10 LBs"
	@echo "make bench-faults     real faults (SIGSTOP, partition, SIGTERM, dead runners) vs the issue-13 targets"
	@echo "make bench-scale      one LB over 100/1,000/5,000 runners: idle CPU, KiB/runner, churn"
	@echo "make lint             ruff, mypy, and buf (proto lint + wire-breaking check)"
	@echo "make proto            regenerate fnlb/v1 and fnlb/fn from protos/"
	@echo "make clean            remove .venv and caches"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,otel]'
	touch $(STAMP)

install: $(STAMP)

# Generated code is committed (so `pip install` needs no protoc); check-proto
# fails when the committed copy and the .proto files disagree.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTOS)

check-proto: $(STAMP)
	@rm -rf build/proto-check && mkdir -p build/proto-check
	@$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=build/proto-check \
		--pyi_out=build/proto-check --grpc_python_out=build/proto-check $(PROTOS)
	@for f in build/proto-check/fnlb/*/*; do \
		g="$${f#build/proto-check/}"; \
		diff -q "$$f" "$$g" >/dev/null 2>&1 || { \
		echo "$$g is stale: run 'make proto' and commit"; exit 1; }; \
	done
	@echo "generated code matches protos/"

test: check-proto
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: check-proto
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) proto-lint
	$(BIN)/ruff check fnlb runner_stub tests bench
	$(BIN)/mypy

$(BUF): tools/npm/package.json tools/npm/package-lock.json
	@command -v npm >/dev/null || { echo "buf needs node and npm (Debian: apt-get install nodejs npm)"; exit 1; }
	rm -rf $(NPM_TOOLS) && mkdir -p $(NPM_TOOLS)
	cp tools/npm/package.json tools/npm/package-lock.json $(NPM_TOOLS)/
	cd $(NPM_TOOLS) && npm ci --cache "$(NPM_CACHE)" --no-audit --no-fund --loglevel=error
	touch $(BUF)

# buf lint (rules and their documented exceptions: protos/buf.yaml), then buf
# breaking: a wire- or JSON-incompatible change to protos/ fails. It compares
# with where this branch left main (git merge-base HEAD main); on main itself
# (CI's clone) with the commit before (for a merge, main before it). Set
# BUF_AGAINST to compare with something else, e.g. '.git#tag=v1,subdir=protos'.
proto-lint: $(BUF)
	$(BUF) lint protos
	@against='$(BUF_AGAINST)'; \
	if [ -z "$$against" ]; then \
		branch=$$(git rev-parse --abbrev-ref HEAD 2>/dev/null); \
		if [ "$$branch" != main ] && base=$$(git merge-base HEAD refs/heads/main 2>/dev/null); then \
			against=".git#ref=$$base,subdir=protos"; \
		elif base=$$(git rev-parse -q --verify 'HEAD~1^{commit}'); then \
			against=".git#ref=$$base,subdir=protos"; \
		else \
			echo "buf breaking skipped: no main branch and no parent commit to compare with"; \
			exit 0; \
		fi; \
	fi; \
	echo "buf breaking protos --against $$against"; \
	$(BUF) breaking protos --against "$$against"

demo: $(STAMP)
	$(BIN)/python -m fnlb.demo $(if $(TLS),--tls,)

bench: $(STAMP)
	$(BIN)/python -m bench.datapath

bench-placement: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.placement

bench-overload: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.overload

bench-sim: $(STAMP)
	$(BIN)/python -m bench.sim

bench-sim-overload: $(STAMP)
	$(BIN)/python -m bench.sim --overload

bench-faults: $(STAMP)
	$(BIN)/python -m bench.faults

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(if $(QUICK),--quick,)

bench-mtls: $(STAMP)
	$(BIN)/python -m bench.mtls

clean:
	rm -rf $(VENV) build bench-results .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
