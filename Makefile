# Breakwater — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: help build test lint fmt fmt-check clippy crds crds-check unit

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

test: fmt-check clippy crds-check unit ## Everything CI runs: format check, clippy, generated-file check, all tests

unit:
	$(CARGO) test --workspace

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
