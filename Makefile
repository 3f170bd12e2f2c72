# Breakwater — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: help build test lint fmt fmt-check clippy crds crds-check unit deps demo

# System tools the tests and the demo use, installed from Debian's packages when missing.
# (command -> package)
SYSTEM_TOOLS := ip:iproute2 iptables-restore:iptables curl:curl setpriv:util-linux

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

demo: ## Run Breakwater locally: flaky services, a sidecar, the same load with the policy off and on
	$(CARGO) build --release -p breakwater-sidecar -p breakwater-fault -p breakwater-demo
	./target/release/breakwater-demo --config examples/local/demo.yaml

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

test: deps k8s-bins fmt-check clippy crds-check unit ## Everything CI runs: format check, clippy, generated-file check, all tests

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
.PHONY: k8s-bins e2e

k8s-bins: ## Build etcd, kube-apiserver, controller-manager, scheduler and helm from Go modules (cached; needs go)
	@bash e2e/gobuild/build.sh

e2e: deps k8s-bins ## Only the tests against a real control plane (e2e/)
	$(CARGO) build --workspace --bins
	$(CARGO) test -p breakwater-e2e
