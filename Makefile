# facecluster — local driver. `make demo` then `make test` on a fresh clone.
# `make run INPUT=in.json` runs the stages as separate processes over one work directory,
# exactly as the containers / Kubernetes Jobs do over a shared volume.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FC     := $(BIN)/facecluster
# torch 2.13.0: the CPU build lies on this project's machines; elsewhere pip picks the platform build.
TORCH  ?= torch==2.13.0

INPUT  ?=
OUTPUT ?= output.json
METHOD ?= infomap
WORK   ?= work
SHARDS ?= 1
DEVICE ?= auto
EMBEDDER ?= dlib
EXAMPLE ?= example

.PHONY: help venv install demo test run bench clean
.PHONY: images images-cpu images-test lint k8s-run gpu-smoke

help:
	@echo "make demo                     venv + install + build the example + run the pipeline on it"
	@echo "make test                     run the test-suite"
	@echo "make run INPUT=in.json [OUTPUT=out.json METHOD=infomap SHARDS=1 WORK=work DEVICE=auto]"
	@echo "make bench                    benchmarks in bench/ (long)"
	@echo "make images [ENGINE=podman|docker REGISTRY=... TAG=...]   build the three GPU stage images"
	@echo "make images-test              CPU images on a local debootstrap base + the demo through them (podman)"
	@echo "make lint                     hadolint the Dockerfiles, validate the rendered k8s/ manifests"
	@echo "make k8s-run INPUT=in.json [OUTPUT=out.json KUSTOMIZE_DIR=k8s]   the pipeline as Kubernetes Jobs"
	@echo "make gpu-smoke [INPUT=in.json GPU_METHOD=gcn-ve]   demo on CUDA vs CPU (exits 0 without a GPU)"

$(BIN)/facecluster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

venv install: $(BIN)/facecluster

demo: $(BIN)/facecluster
	$(BIN)/python -m facecluster.demo $(EXAMPLE)
	$(FC) run $(EXAMPLE)/input.json -o $(EXAMPLE)/output.json --work-dir $(EXAMPLE)/work --report $(EXAMPLE)/report.html --report-labels field:person
	$(FC) evaluate $(EXAMPLE)/output.json --labels field:person
	@echo "demo output: $(EXAMPLE)/output.json   review page: $(abspath $(EXAMPLE))/report.html"

test: $(BIN)/facecluster
	$(BIN)/python -m pytest -q -rs

run: $(BIN)/facecluster
	@test -n "$(INPUT)" || { echo "usage: make run INPUT=input.json [OUTPUT=output.json METHOD=$(METHOD) SHARDS=$(SHARDS)]"; exit 2; }
	$(FC) prepare "$(INPUT)" --work-dir "$(WORK)"
	@for i in $$(seq 0 $$(($(SHARDS) - 1))); do \
	  echo "$(FC) embed --work-dir $(WORK) --shard $$i/$(SHARDS) --embedder $(EMBEDDER) --device $(DEVICE)"; \
	  $(FC) embed --work-dir "$(WORK)" --shard $$i/$(SHARDS) --embedder "$(EMBEDDER)" --device "$(DEVICE)" || exit $$?; \
	done
	$(FC) merge --work-dir "$(WORK)" --shards $(SHARDS)
	$(FC) cluster --work-dir "$(WORK)" --method "$(METHOD)" --device "$(DEVICE)" -o "$(OUTPUT)"

bench: $(BIN)/facecluster
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit $$?; done

clean:
	rm -rf $(EXAMPLE) $(WORK) test-artifacts .pytest_cache

# ---- containers, Kubernetes, GPU smoke test (docs/deploy.md) ----
ENGINE        ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
K8S_VERSION   ?= 1.33.0
KUSTOMIZE_DIR ?= k8s
GPU_METHOD    ?= gcn-ve

images:
	ENGINE=$(ENGINE) scripts/images.sh build

images-cpu:
	ENGINE=$(ENGINE) scripts/images.sh build --cpu

images-test: $(BIN)/facecluster
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -rs -m podman tests/test_containers.py tests/test_k8s.py

lint: $(BIN)/facecluster
	$(BIN)/hadolint images/*/Dockerfile
	@mkdir -p build
	kubectl kustomize $(KUSTOMIZE_DIR) > build/k8s-rendered.yaml
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) build/k8s-rendered.yaml
	cd scripts && $(abspath $(BIN))/shellcheck -x *.sh
	@echo "lint: ok"

k8s-run:
	@test -n "$(INPUT)" || { echo "usage: make k8s-run INPUT=input.json [OUTPUT=output.json KUSTOMIZE_DIR=k8s]"; exit 2; }
	KUSTOMIZE_DIR="$(KUSTOMIZE_DIR)" scripts/k8s-run.sh "$(INPUT)" "$(OUTPUT)"

gpu-smoke: $(BIN)/facecluster
	$(BIN)/python bench/gpu_smoke.py $(if $(INPUT),--input "$(INPUT)") --method $(GPU_METHOD)
