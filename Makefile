# fnlb — every target creates and uses its own virtualenv in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/fnlb/v1/*.proto)
PYTEST_ARGS ?=

.PHONY: help install proto check-proto test test-fast lint demo bench bench-placement bench-overload bench-mtls bench-sim bench-sim-overload bench-faults bench-scale clean

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
	@echo "make lint             ruff and mypy"
	@echo "make proto            regenerate fnlb/v1 from protos/"
	@echo "make clean            remove .venv and caches"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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
	@for f in build/proto-check/fnlb/v1/*; do \
		diff -q "$$f" "fnlb/v1/$$(basename $$f)" >/dev/null || { \
		echo "fnlb/v1/$$(basename $$f) is stale: run 'make proto' and commit"; exit 1; }; \
	done
	@echo "generated code matches protos/"

test: check-proto
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: check-proto
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fnlb runner_stub tests bench
	$(BIN)/mypy

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
