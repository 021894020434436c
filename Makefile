# shardrec developer workflow. `make` alone prints this help.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLUSTER_STATE ?= .state/controlplane
NODE_STATE ?= .state/node
# NODE=1: `make cluster-up` also starts one real node (containerd + kubelet + kube-proxy; root) beside the kwok nodes.
NODE ?= 0

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Run

.PHONY: demo
demo: $(STAMP) ## Train on MovieLens and run a local 4-shard x 2-replica cluster on 127.0.0.1:8080
	$(BIN)/recctl demo

.PHONY: demo-canary
demo-canary: $(STAMP) ## Like demo, then a canary of a v2 trained with other parameters: its analysis table, promoted or rolled back
	$(BIN)/recctl demo --canary

.PHONY: demo-down
demo-down: $(STAMP) ## Stop the demo cluster
	$(BIN)/recctl down --state-dir .shardrec/movielens

##@ Development

# pip's cache lives under $$SHARDREC_CACHE like every other cache (e2e/tools/cache-env.sh).
$(STAMP): pyproject.toml
	source e2e/tools/cache-env.sh && $(PYTHON) -m venv $(VENV) \
	  && $(BIN)/pip install --quiet --upgrade pip \
	  && $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with its dev extras

.PHONY: lint
lint: $(STAMP) ## ruff + import-linter layer contracts + no early-exiting pipes under pipefail
	$(BIN)/python e2e/tools/check_pipes.py
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
	$(BIN)/pytest --durations=40 --durations-min=10

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ (and the chart's copy) from the API models
	$(BIN)/recctl crd --out-dir crds $(if $(wildcard charts/shardrec-operator/crds),--out-dir charts/shardrec-operator/crds,)

.PHONY: crds-check
crds-check: $(STAMP) ## Fail if crds/ drifted from the models
	@diff -u crds/recommenderclusters.shardrec.io.yaml <($(BIN)/recctl crd) \
	  || { echo "crds/ is stale: run 'make crds' and commit"; exit 1; }

##@ Packaging and monitoring

.PHONY: tools
tools: $(STAMP) ## Install promtool/hadolint and build helm (cached outside the repo)
	bash e2e/tools/install-tools.sh $(BIN)/python
	bash e2e/tools/build-helm.sh

.PHONY: monitoring
monitoring: $(STAMP) ## Regenerate the dashboard and the chart's copies of rules and dashboard
	$(BIN)/python monitoring/dashboard.py
	cp monitoring/alerts.yaml charts/shardrec-operator/files/alerts.yaml

.PHONY: images
images: $(STAMP) ## Both images (Dockerfile targets serving, operator) without Docker: buildah, Debian base; OCI archives in ~/.cache/shardrec/images
	bash e2e/images/build.sh
	SHARDREC_REQUIRE_IMAGES=1 $(BIN)/pytest -m images e2e/images

.PHONY: ship
ship: $(STAMP) ## Packaging checks (promtool, helm, hadolint, RBAC, dashboard, real Prometheus)
	SHARDREC_REQUIRE_TOOLS=1 $(BIN)/pytest tests/ship

.PHONY: chaos
chaos: $(STAMP) ## Fault suite at full scale (slow bodies, poison ids, SIGSTOP, kills, corrupt artifact, full disk, heavy batches) -> docs/reliability.md (~5 min)
	@mkdir -p .state
	rm -f .state/chaos-rows.json
	SHARDREC_CHAOS_SCALE=full SHARDREC_CHAOS_ROWS=.state/chaos-rows.json \
	  nice -n 10 $(BIN)/pytest -p no:cacheprovider -m chaos tests/chaos
	$(BIN)/python benchmarks/chaos_table.py .state/chaos-rows.json

##@ Benchmarks

.PHONY: bench
bench: $(STAMP) ## Benchmarks -> docs/benchmarks.md (minutes; BENCH_ARGS="--size 1m" for 1M items, "--quick" for a smoke run)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq wrk; } \
	  || { echo "make bench needs wrk (Debian/Ubuntu: apt-get install -y wrk)"; exit 2; }
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/design_tables.py

.PHONY: bench-cache
bench-cache: $(STAMP) ## Result cache on vs off (Zipf users) and a 10x spike with fallback answers -> docs/benchmarks.md (~2 min)
	$(BIN)/python benchmarks/result_cache.py --write-doc $(BENCH_ARGS)

.PHONY: bench-ab
bench-ab: $(STAMP) ## A/B of each hand-written hot-path part against its library -> docs/benchmarks.md (~2 min)
	$(BIN)/python benchmarks/ab.py $(BENCH_ARGS)

.PHONY: bench-tls
bench-tls: $(STAMP) ## Router -> shard with and without TLS, side by side in one run -> docs/benchmarks.md (~2 min, niced)
	nice -n 10 $(BIN)/python benchmarks/tls_bench.py $(BENCH_ARGS)

.PHONY: bench-peers
bench-peers: $(STAMP) ## Ours (router over HTTP, in-process) vs Chroma's HTTP server, Redis's query engine, Redis 8's Vector Sets and Qdrant Edge at equal recall, 100k x 64 -> docs/benchmarks.md (~7 min here, niced; first use also installs Chroma and Redis Stack and builds Redis 8.0.2, a few minutes each; BENCH_ARGS=--quick for a smoke run, BENCH_ARGS='--redis-search-module PATH' for Redis 8's query engine instead of Redis Stack 7.4's)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq wrk; } \
	  || { echo "make bench-peers needs wrk (Debian/Ubuntu: apt-get install -y wrk)"; exit 2; }
	$(BIN)/python -c 'import qdrant_edge' 2>/dev/null \
	  || $(BIN)/pip install --quiet "$$(grep -o '"qdrant-edge-py[<>=~!][^"]*' pyproject.toml | tr -d '"')"
	$(BIN)/python -c 'import hiredis' 2>/dev/null \
	  || $(BIN)/pip install --quiet "$$(grep -o '"hiredis[<>=~!][^"]*' pyproject.toml | tr -d '"')"
	nice -n 10 $(BIN)/python benchmarks/peers_bench.py $(BENCH_ARGS)

.PHONY: bench-writes
bench-writes: $(STAMP) ## Item writes: acked writes/s, write p50/p99, read p99 with vs without writes, ack all/majority, interleaved rounds -> docs/benchmarks.md (~5 min, niced)
	@command -v wrk >/dev/null || { echo "make bench-writes needs wrk (Debian/Ubuntu: apt-get install -y wrk)"; exit 2; }
	nice -n 10 $(BIN)/python benchmarks/writes_bench.py --write-doc $(BENCH_ARGS)

.PHONY: bench-objectstore
bench-objectstore: $(STAMP) objectstore-build ## boto3 vs obstore vs s3fs: one 1 GiB partition from SeaweedFS -> docs/benchmarks.md (~3 min)
	$(BIN)/python benchmarks/objectstore_bench.py $(BENCH_ARGS)

.PHONY: bench-coldstart
bench-coldstart: $(STAMP) objectstore-build ## Shard cold start (download, verify, load, /readyz) at 100k/300k/1M items from SeaweedFS -> docs/benchmarks.md (~15 min, niced)
	nice -n 10 $(BIN)/python benchmarks/coldstart_bench.py $(BENCH_ARGS)

# Each (sizes, dims) run writes its own section of docs/benchmarks.md, named by both.
SCALE_ARGS ?= --sizes 100k --dims 64

.PHONY: bench-scale
bench-scale: $(STAMP) ## ef and CPU per query for recall@10 0.90/0.95/0.98, one shard and 4 merged, 100k x 64 (SCALE_ARGS="--sizes 1m --dims 64" for the long ones; 10M: add --resume --work DIR and rerun until done) -> docs/benchmarks.md (niced)
	nice -n 10 $(BIN)/python benchmarks/scale_bench.py --write-doc $(SCALE_ARGS)

.PHONY: bench-train
bench-train: $(STAMP) ## ALS CPU per iteration of recctl train's trainer on MovieLens at 16-256 factors -> docs/benchmarks.md (niced; copy the rows into tools/capacity/pipeline.py)
	nice -n 10 $(BIN)/python benchmarks/train_rate.py

.PHONY: plots
plots: $(STAMP) ## Tail-latency simulation: plots -> docs/img/, tables -> docs/design.md (10 seeds; ~25 min on 2 cores, niced; the shared-core check alone: tail_plots.py --contention-only)
	nice -n 10 $(BIN)/python benchmarks/tail_plots.py --write-doc docs/design.md

.PHONY: tail-check
tail-check: $(STAMP) ## Measure closed- and open-loop latency of a local 4-shard cluster -> benchmarks/tail_check.json (~4 min, niced; then make plots)
	nice -n 10 $(BIN)/python benchmarks/tail_check.py

.PHONY: evaluation-doc
evaluation-doc: $(STAMP) ## Tune, train and evaluate on MovieLens -> docs/evaluation.md (~10 min, niced; EVAL_ARGS=--quick)
	nice -n 10 $(BIN)/python benchmarks/evaluation_doc.py $(EVAL_ARGS)

.PHONY: evaluation-foldin
evaluation-foldin: $(STAMP) ## User fold-in quality on MovieLens (5 folds, ALS retrained per fold, niced) -> docs/evaluation.md
	nice -n 10 $(BIN)/python benchmarks/foldin_eval.py

.PHONY: design-tables
design-tables: $(STAMP) ## Rewrite the capacity tables of docs/design.md from recctl capacity (make bench does it too)
	$(BIN)/python benchmarks/design_tables.py

.PHONY: coefficients
coefficients: $(STAMP) ## Short first measurement of the capacity coefficients on this machine (~6 min)
	$(BIN)/python benchmarks/coefficients.py measure

.PHONY: capacity
capacity: $(STAMP) ## Capacity plan for the sizing in docs/design.md
	$(BIN)/recctl capacity --peak-qps 36000 --items 10000000 --dimension 64 --users 100000000 \
	  --k 10 --recall 0.95 --availability 99.95 --zones 3

##@ Kubernetes control plane (no Docker needed)

.PHONY: cluster-build
cluster-build: ## Build etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok (cached outside the repo)
	bash e2e/controlplane/build.sh

.PHONY: objectstore-build
objectstore-build: ## Build SeaweedFS (the S3 object store of the tests) from the Go module proxy (cached outside the repo)
	bash e2e/objectstore/build.sh

.PHONY: cluster-up
cluster-up: $(STAMP) cluster-build $(if $(filter 1,$(NODE)),node-build) ## Start a local control plane with kwok nodes (NODE=1: plus a real node); prints KUBECONFIG
	$(BIN)/python e2e/controlplane/cluster.py up --state-dir $(CLUSTER_STATE)
	$(if $(filter 1,$(NODE)),$(BIN)/python e2e/node/node.py up --cluster-state $(CLUSTER_STATE) --state-dir $(NODE_STATE))

.PHONY: cluster-down
cluster-down: $(STAMP) ## Stop the local control plane (and the real node, if one runs)
	$(BIN)/python e2e/node/node.py down --state-dir $(NODE_STATE)
	$(BIN)/python e2e/controlplane/cluster.py down --state-dir $(CLUSTER_STATE)

.PHONY: node-build
node-build: ## Build kubelet, kube-proxy, containerd, runc; apt-get the CNI plugins (cached outside the repo)
	bash e2e/node/build.sh

.PHONY: node-up
node-up: $(STAMP) node-build ## Start one real node beside a running `make cluster-up` (root)
	$(BIN)/python e2e/node/node.py up --cluster-state $(CLUSTER_STATE) --state-dir $(NODE_STATE)

.PHONY: node-down
node-down: $(STAMP) ## Stop the real node (pods first), undo its network changes
	$(BIN)/python e2e/node/node.py down --state-dir $(NODE_STATE)

.PHONY: e2e-node
e2e-node: $(STAMP) node-build ## Real-node suite + every scenario under traffic (root; needs `make images`)
	bash e2e/tools/build-prometheus.sh
	SHARDREC_REQUIRE_NODE=1 SHARDREC_REQUIRE_IMAGES=1 SHARDREC_NODE_SCENARIOS=1 $(BIN)/pytest -m node e2e/node

.PHONY: e2e
e2e: $(STAMP) cluster-build ## Operator suite against a real API server built from source
	SHARDREC_REQUIRE_CONTROLPLANE=1 $(BIN)/pytest -m controlplane

.PHONY: e2e-kind
e2e-kind: $(STAMP) ## The same suite on kind with real images (needs Docker)
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 \
	  || { echo "e2e-kind needs a running Docker engine and kind; none here. Use 'make e2e' instead."; exit 2; }
	@command -v kind >/dev/null || { echo "e2e-kind needs kind on PATH"; exit 2; }
	bash e2e/kind/run.sh
