# The two commands of the README:
#   make run    install (first time) and run the default FedDAT federation, offline
#   make test   install (first time) and run the test suite
#   make test-fast  the unit tests only (no Flower processes; under 2 minutes), while developing
#   make smoke-containers  build both images and run a TLS federation in them (podman, root,
#                   ~10.5 minutes from nothing; docker/README.md); not part of `make test`
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch 2.13 (resolved together with the rest; an unpinned torch pulls a CUDA build).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# Extra arguments for `make run`, e.g. ARGS="--clients 3 -c num-rounds=2 -c preset=label-skew"
ARGS   ?=

.PHONY: install run test test-fast smoke-containers clean-model
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m feddat_flwr.tools.launch --clients 5 $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not e2e"

smoke-containers:
	docker/smoke.sh

clean-model:
	rm -rf $${FEDDAT_CACHE:-$$HOME/.cache/feddat-flwr}/models
