# shardrec developer workflow. `make` alone prints this help.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLUSTER_STATE ?= .state/controlplane

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with its dev extras

.PHONY: lint
lint: $(STAMP) ## ruff + import-linter layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

.PHONY: fmt
fmt: $(STAMP) ## Format and autofix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

.PHONY: unit
unit: $(STAMP) ## Fast tests only (no processes, no control plane)
	$(BIN)/pytest -m "not integration and not controlplane"

.PHONY: test
test: lint typecheck crds-check ## Lint, type-check, and run every test (control-plane tests skip without binaries)
	$(BIN)/pytest

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ (and the chart's copy) from the API models
	$(BIN)/recctl crd --out-dir crds $(if $(wildcard charts/shardrec-operator/crds),--out-dir charts/shardrec-operator/crds,)

.PHONY: crds-check
crds-check: $(STAMP) ## Fail if crds/ drifted from the models
	@diff -u crds/recommenderclusters.shardrec.io.yaml <($(BIN)/recctl crd) \
	  || { echo "crds/ is stale: run 'make crds' and commit"; exit 1; }

##@ Kubernetes control plane (no Docker needed)

.PHONY: cluster-build
cluster-build: ## Build etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok (cached outside the repo)
	bash e2e/controlplane/build.sh

.PHONY: cluster-up
cluster-up: $(STAMP) cluster-build ## Start a local control plane with kwok nodes; prints KUBECONFIG
	$(BIN)/python e2e/controlplane/cluster.py up --state-dir $(CLUSTER_STATE)

.PHONY: cluster-down
cluster-down: $(STAMP) ## Stop the local control plane
	$(BIN)/python e2e/controlplane/cluster.py down --state-dir $(CLUSTER_STATE)

.PHONY: e2e
e2e: $(STAMP) cluster-build ## Operator suite against a real API server built from source
	SHARDREC_REQUIRE_CONTROLPLANE=1 $(BIN)/pytest -m controlplane

.PHONY: e2e-kind
e2e-kind: ## The same suite on kind with real images (needs Docker)
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 \
	  || { echo "e2e-kind needs a running Docker engine and kind; none here. Use 'make e2e' instead."; exit 2; }
	@command -v kind >/dev/null || { echo "e2e-kind needs kind on PATH"; exit 2; }
	bash e2e/kind/run.sh
