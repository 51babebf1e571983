# ryze-events. `make` alone lists the targets.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ryze-events/target
CARGO ?= cargo

.DEFAULT_GOAL := help

##@ Run

run: ## Start the single-process system (embedded publisher, private Postgres in .run/, demo seeded)
	@bash scripts/run-local.sh

##@ Test

test: deps ## Build, lint the chart, and run every test against real redis-server and postgres
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=$${TEST_THREADS:-2}
	@if [ -f deploy/helm-lint.sh ]; then $(MAKE) --no-print-directory helm-lint; fi

deps: ## Install redis-server, Postgres, chromium and the browser-test driver when missing
	@bash scripts/install-test-deps.sh
	@bash tests/browser/setup.sh

soak: ## Long connection-churn soak: SOAK_SECONDS (600), SOAK_WORKERS (24), SOAK_INSTANCES (40)
	@bash scripts/soak.sh

chaos: ## Chaos soak: seeded faults under load, invariant checker; CHAOS_SECONDS (600), CHAOS_SEED, CHAOS_REDIS=cluster|sentinel; report into docs/reliability.md
	$(CARGO) build --workspace --bins
	CHAOS_DOC=$${CHAOS_DOC-docs/reliability.md} CHAOS_REPORT=$${CHAOS_REPORT:-$(CARGO_TARGET_DIR)/chaos-report.json} \
		RYZE_BIN_DIR=$(CARGO_TARGET_DIR)/debug $(CARGO_TARGET_DIR)/debug/ryze-chaos

bench: ## Every benchmark scenario (release build, ~10 min); rewrites docs/benchmarks.md
	@bash scripts/bench.sh

bench-quick: ## Smaller benchmark run (2-3 min) for before/after checks of a hot-path change
	@bash scripts/bench.sh --quick

##@ Quality

lint: ## Clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

helm-lint: ## Lint, render and validate the Helm chart offline
	@if [ -f deploy/helm-lint.sh ]; then bash deploy/helm-lint.sh; else echo "helm-lint: chart not present yet"; fi

##@ Help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*##/ {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run test deps soak chaos bench bench-quick lint fmt helm-lint help
