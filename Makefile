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

help:
	@echo "make demo                     venv + install + build the example + run the pipeline on it"
	@echo "make test                     run the test-suite"
	@echo "make run INPUT=in.json [OUTPUT=out.json METHOD=infomap SHARDS=1 WORK=work DEVICE=auto]"
	@echo "make bench                    benchmarks in bench/ (long)"

$(BIN)/facecluster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

venv install: $(BIN)/facecluster

demo: $(BIN)/facecluster
	$(BIN)/python -m facecluster.demo $(EXAMPLE)
	$(FC) run $(EXAMPLE)/input.json -o $(EXAMPLE)/output.json --work-dir $(EXAMPLE)/work --report $(EXAMPLE)/report.html
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
