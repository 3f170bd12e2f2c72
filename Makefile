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
demo-cluster: deps k8s-bins otelcol images ## Breakwater on a real Kubernetes control plane: helm install, kubectl apply, calls before and after, a trace (about 30 s once built)
	$(CARGO) build --workspace --bins
	./target/debug/breakwater-demo-cluster $(DEMO_ARGS)

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

test: deps haproxy k8s-bins otelcol h2spec krew promtool prometheus-operator-crds images plugin-archive image-test-tools fmt-check clippy crds-check unit fuzz-short ## Everything CI runs: format check, clippy, generated-file check, all tests, 20 s of fuzzing per target

unit:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# $(call apt-ensure,command:package ...): installs, from Debian's packages, each package whose
# command is neither on PATH nor in /usr/sbin (needs root).
define apt-ensure
	@missing=""; for pair in $(1); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

deps: ## Install the system tools the tests need (iproute2, iptables, curl, util-linux) if missing
	$(call apt-ensure,$(SYSTEM_TOOLS))

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

# Images (images/build.sh, Dockerfile): static musl binaries of the `dist` profile, packed by umoci
# into OCI archives under target/images/, reproducibly (same commit, same digest), no daemon.
.PHONY: images image-tools image-test-tools push
MUSL_TARGET := x86_64-unknown-linux-musl
IMAGE_DIR := target/images
VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/breakwater/Chart.yaml)
TAG ?= $(VERSION)
# What `make push` publishes (fault-server and e2e-client are the tests' own images).
PUSH_IMAGES ?= operator sidecar

image-tools: ## Install what make images needs: Rust's musl target (rustup), musl-tools, umoci, iptables, file (Debian)
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	$(call apt-ensure,musl-gcc:musl-tools umoci:umoci file:file xtables-nft-multi:iptables)

# The tests compare the Dockerfile's image stages (built by Buildah) with make images, and push to a
# real registry (crane's, built from its Go module) with skopeo.
image-test-tools: image-tools
	$(call apt-ensure,buildah:buildah skopeo:skopeo)
	@bash e2e/gobuild/crane/build.sh

images: image-tools ## Build the operator, sidecar, fault-server and e2e-client images into target/images/*.oci.tar (no Docker needed)
	$(CARGO) build --locked --profile dist --target $(MUSL_TARGET) \
	  -p breakwater-sidecar -p breakwater-operator -p breakwater-fault -p breakwater-e2e \
	  --bin breakwater-sidecar --bin breakwater-operator --bin breakwater-fault --bin breakwater-e2e-client
	images/build.sh target/$(MUSL_TARGET)/dist $(IMAGE_DIR)

# The kubectl plugin as krew installs it (.krew.yaml, a krew-release-bot template): a static binary
# and the LICENSE in a reproducible archive, with its sha256 beside it.
PLUGIN_ARCHIVE ?= target/plugin/kubectl-breakwater-linux-amd64.tar.gz
plugin-archive: image-tools ## Build the static kubectl-breakwater (linux/amd64) into target/plugin/kubectl-breakwater-linux-amd64.tar.gz (+ .sha256), the archive .krew.yaml installs
	$(CARGO) build --locked --profile dist --target $(MUSL_TARGET) -p breakwater-kubectl --bin kubectl-breakwater
	@kubectl/package.sh target/$(MUSL_TARGET)/dist/kubectl-breakwater $(PLUGIN_ARCHIVE)

push: images ## Copy the operator and sidecar images to a registry: make push REGISTRY=registry.example.com/team [TAG=chart appVersion]
	$(call apt-ensure,skopeo:skopeo)
	@images/push.sh "$(REGISTRY)" "$(TAG)" $(IMAGE_DIR) $(PUSH_IMAGES)

# Tests against a real control plane (e2e/): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and helm, built from their Go modules once into $BREAKWATER_CACHE (~/.cache/breakwater).
.PHONY: k8s-bins e2e otelcol h2spec krew promtool prometheus-operator-crds plugin-archive fuzz fuzz-short fuzz-tools

# Coverage-guided fuzzing (libFuzzer on stable Rust: fuzz/run.sh says why): the request front
# (protocol detection, HTTP/1 and HTTP/2 heads, routing, the policy path) and the configuration
# loaders (local file, snapshot wire). The first build takes about 5 minutes.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
fuzz-tools: ## Install the C++ compiler libFuzzer is built with (Debian's g++) if missing
	$(call apt-ensure,g++:g++)

fuzz: fuzz-tools ## Fuzz each target for FUZZ_SECONDS (600) from its corpus; FUZZ_TARGETS=request_front picks some
	bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-short: fuzz-tools
	bash fuzz/run.sh 20

otelcol: ## Build the OpenTelemetry Collector for the trace end-to-end test (cached; needs go)
	@bash e2e/gobuild/otelcol/build.sh

krew: ## Build krew, kubectl's plugin manager, for the plugin test (cached; needs go)
	@bash e2e/gobuild/krew/build.sh

promtool: ## Build Prometheus's promtool, which checks and unit-tests the chart's alert rules (cached; needs go)
	@bash e2e/gobuild/promtool/build.sh

prometheus-operator-crds: ## Fetch the Prometheus Operator's CRDs the chart's monitoring objects are checked against (cached; needs go)
	@bash e2e/gobuild/prometheus-operator/fetch.sh

h2spec: ## Build h2spec, the HTTP/2 conformance suite run against the sidecar (cached; needs go)
	@bash e2e/gobuild/h2spec/build.sh

k8s-bins: ## Build etcd, kube-apiserver, controller-manager, scheduler, kubectl and helm from Go modules (cached; needs go)
	@bash e2e/gobuild/build.sh

e2e: deps k8s-bins otelcol promtool prometheus-operator-crds images image-test-tools ## Only the tests against a real control plane (e2e/)
	$(CARGO) build --workspace --bins
	$(CARGO) test -p breakwater-e2e

# make bench (bench/): the same load straight to a backend, through HAProxy and through the sidecar
# (1 hop, 1 hop with every policy layer, 2 hops), over HTTP/1.1 and h2c; ratios in bench/results/.
# The load generator, oha, is built once from crates.io into $BREAKWATER_CACHE/tools; HAProxy comes
# from Debian's packages. `make test` needs both too: it runs the harness's smoke test.
.PHONY: bench bench-tools bench-build bench-instructions bench-syscalls bench-operator bench-convergence haproxy
BENCH_TOOLS := $(or $(BREAKWATER_CACHE),$(HOME)/.cache/breakwater)/tools
OHA_VERSION := 1.16.0
OHA := $(BENCH_TOOLS)/oha-$(OHA_VERSION)/bin/oha

haproxy: ## Install HAProxy from Debian's packages if missing (the bench compares with it)
	$(call apt-ensure,haproxy:haproxy)

bench-tools: haproxy ## Install what make bench needs: HAProxy, valgrind and strace (Debian), oha 1.16.0 (crates.io, built once into the cache)
	$(call apt-ensure,valgrind:valgrind strace:strace)
	@[ -x $(OHA) ] || $(CARGO) install oha --locked --version $(OHA_VERSION) --root $(BENCH_TOOLS)/oha-$(OHA_VERSION)

# The proxies are measured as they ship: the `dist` profile (fat LTO, one codegen unit).
bench-build:
	$(CARGO) build --profile dist -p breakwater-sidecar -p breakwater-fault
	$(CARGO) build --release -p breakwater-bench

bench: deps bench-tools bench-build ## Measure the sidecar against no proxy and HAProxy (about 12 minutes); writes bench/results/
	./target/release/breakwater-bench --bin-dir target/dist --oha $(OHA) --out bench/results $(BENCH_ARGS)

bench-instructions: deps bench-tools bench-build ## Count instructions per request of each proxy under callgrind (about 6 minutes; steady where timings are not)
	./target/release/breakwater-bench --instructions --bin-dir target/dist --oha $(OHA) --out bench/results $(BENCH_ARGS)

bench-syscalls: deps bench-tools bench-build ## Count system calls per request of each proxy with strace (about 2 minutes); writes bench/results/syscalls.md
	./target/release/breakwater-bench --syscalls --bin-dir target/dist --oha $(OHA) --out bench/results $(BENCH_ARGS)

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
