# Breakwater — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: help build test lint fmt fmt-check clippy crds crds-check unit deps demo demo-cluster

# System tools the tests and the demo use, installed from Debian's packages when missing.
# (command -> package)
SYSTEM_TOOLS := ip:iproute2 iptables-restore:iptables curl:curl setpriv:util-linux

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

demo: ## Run Breakwater locally: flaky services, a sidecar, the same load with the policy off and on
	$(CARGO) build --release -p breakwater-sidecar -p breakwater-fault -p breakwater-demo
	./target/release/breakwater-demo --config examples/local/demo.yaml

# The same story on a real Kubernetes control plane started on this machine (the e2e harness):
# needs root (network namespaces, iptables) and Go; the first run builds the control plane and
# the OpenTelemetry Collector from their Go modules (about 20 minutes on 2 cores, cached after).
demo-cluster: deps k8s-bins otelcol ## Breakwater on a real Kubernetes control plane: helm install, kubectl apply, calls before and after, a trace (about 30 s once built)
	$(CARGO) build --workspace --bins
	./target/debug/breakwater-demo-cluster $(DEMO_ARGS)

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

test: deps haproxy k8s-bins otelcol fmt-check clippy crds-check unit ## Everything CI runs: format check, clippy, generated-file check, all tests

unit:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

deps: ## Install the system tools the tests need (iproute2, iptables, curl, util-linux) if missing
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: fmt-check clippy ## Format check and clippy with warnings as errors

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

crds: ## Regenerate the CRD in the chart from the Rust types
	$(CARGO) run -q -p breakwater-crds --bin crdgen

crds-check:
	$(CARGO) run -q -p breakwater-crds --bin crdgen -- --check

# Tests against a real control plane (e2e/): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and helm, built from their Go modules once into $BREAKWATER_CACHE (~/.cache/breakwater).
.PHONY: k8s-bins e2e otelcol

otelcol: ## Build the OpenTelemetry Collector for the trace end-to-end test (cached; needs go)
	@bash e2e/gobuild/otelcol/build.sh

k8s-bins: ## Build etcd, kube-apiserver, controller-manager, scheduler, kubectl and helm from Go modules (cached; needs go)
	@bash e2e/gobuild/build.sh

e2e: deps k8s-bins ## Only the tests against a real control plane (e2e/)
	$(CARGO) build --workspace --bins
	$(CARGO) test -p breakwater-e2e

# make bench (bench/): the same load straight to a backend, through HAProxy and through the sidecar
# (1 hop, 1 hop with every policy layer, 2 hops), over HTTP/1.1 and h2c; ratios in bench/results/.
# The load generator, oha, is built once from crates.io into $BREAKWATER_CACHE/tools; HAProxy comes
# from Debian's packages. `make test` needs both too: it runs the harness's smoke test.
.PHONY: bench bench-tools bench-build bench-instructions bench-operator bench-convergence haproxy
BENCH_TOOLS := $(or $(BREAKWATER_CACHE),$(HOME)/.cache/breakwater)/tools
OHA_VERSION := 1.16.0
OHA := $(BENCH_TOOLS)/oha-$(OHA_VERSION)/bin/oha

haproxy: ## Install HAProxy from Debian's packages if missing (the bench compares with it)
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  echo "installing: haproxy"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install haproxy" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }

bench-tools: haproxy ## Install what make bench needs: HAProxy and valgrind (Debian), oha 1.16.0 (crates.io, built once into the cache)
	@command -v valgrind >/dev/null 2>&1 || { \
	  echo "installing: valgrind"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install valgrind" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	@[ -x $(OHA) ] || $(CARGO) install oha --locked --version $(OHA_VERSION) --root $(BENCH_TOOLS)/oha-$(OHA_VERSION)

# The proxies are measured as they ship: the `dist` profile (fat LTO, one codegen unit).
bench-build:
	$(CARGO) build --profile dist -p breakwater-sidecar -p breakwater-fault
	$(CARGO) build --release -p breakwater-bench

bench: deps bench-tools bench-build ## Measure the sidecar against no proxy and HAProxy (about 12 minutes); writes bench/results/
	./target/release/breakwater-bench --bin-dir target/dist --oha $(OHA) --out bench/results $(BENCH_ARGS)

bench-instructions: deps bench-tools bench-build ## Count instructions per request of each proxy under callgrind (about 6 minutes; steady where timings are not)
	./target/release/breakwater-bench --instructions --bin-dir target/dist --oha $(OHA) --out bench/results $(BENCH_ARGS)

# make bench-operator: the operator at scale (1,000 policies, 2,000 Services, 10,000 endpoints,
# 5,000 pods) on a real API server from the e2e harness; bench/results/operator.md.
bench-operator: deps k8s-bins ## Measure the operator at scale on a real API server (about 10 minutes); writes bench/results/operator.md
	$(CARGO) build --release -p breakwater-operator -p breakwater-bench
	./target/release/breakwater-bench-operator --operator target/release/breakwater-operator --out bench/results $(BENCH_ARGS)

# make bench-convergence: a policy change until N sidecar streams applied it (N = 100, 1,000),
# the operator's memory and CPU per idle stream and per push, the sidecar's memory with 500
# Services / 5,000 endpoints; bench/results/convergence.md.
bench-convergence: deps k8s-bins ## Measure config-API convergence at 100 and 1,000 streams (about 5 minutes); writes bench/results/convergence.md
	$(CARGO) build --release -p breakwater-operator -p breakwater-sidecar -p breakwater-bench
	./target/release/breakwater-bench-convergence --operator target/release/breakwater-operator --sidecar target/release/breakwater-sidecar --out bench/results $(BENCH_ARGS)
