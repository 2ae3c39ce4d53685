# Two commands for a fresh machine: `make demo` (the main job on the embedded sample data) and
# `make test` (the whole suite). Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= all,dev
DEEPSPEED_VERSION ?= 0.19.8

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml scripts/install-torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	scripts/install-torch $(PY)
	# DeepSpeed ships as an sdist whose build imports torch: build it against the torch just
	# installed, or pip's isolated build env would fetch a second (CUDA) torch.
	$(PY) -m pip install -q --no-build-isolation "deepspeed==$(DEEPSPEED_VERSION)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m ntire demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs data

# `make submission TRACK={bicubic,unknown} [SCALES="2 3 4"] [SPLIT=test|valid] [DATA=DIR] [MANIFEST=...]`:
# validated challenge zips per scale (see submissions/README.md). With no arguments: the sample
# data's valid split, with the demo's model (or a small one trained first), in a few minutes.
TRACK ?= bicubic
MANIFEST ?= submissions/sample.yaml
SCALES ?=
SPLIT ?=
DATA ?=

.PHONY: submission
submission: $(STAMP)
	$(PY) -m ntire submit --manifest $(MANIFEST) --track $(TRACK) $(if $(strip $(SCALES)),--scales $(SCALES)) $(if $(SPLIT),--split $(SPLIT)) $(if $(DATA),--data $(DATA))
