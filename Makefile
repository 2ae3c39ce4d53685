# Two commands for a fresh machine: `make demo` (the main job on the embedded sample data) and
# `make test` (the whole suite). Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= all,dev
DEEPSPEED_VERSION ?= 0.19.8

.PHONY: venv demo test lint bench clean

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

# The linter first: a few seconds, and CI (which runs `make test`) enforces it.
test: lint
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs data

# `make submission TRACK={bicubic,unknown} [SCALES="2 3 4"] [SPLIT=test|valid] [DATA=DIR] [MANIFEST=...]`:
# validated challenge zips per scale (see submissions/README.md). `ntire submit` never trains, so
# for the sample manifest (the default) this first makes what it needs: the sample dataset and,
# per track, a small MDSR (`sample-models`), each skipped when it exists. With no arguments: the
# sample data's valid split, with the demo's model where it exists, in a few minutes.
TRACK ?= bicubic
SAMPLE_MANIFEST := submissions/sample.yaml
MANIFEST ?= $(SAMPLE_MANIFEST)
SCALES ?=
SPLIT ?=
DATA ?=
# Where submissions/sample.yaml looks for its data and small models: change them together.
SAMPLE_DATA := data/sample
SAMPLE_MODELS := runs/submissions/sample-models
SAMPLE_MODEL_CONFIG := submissions/train/sample_mdsr.yaml
# A model counts as made once its export is whole: config.yaml is written after model.safetensors.
SAMPLE_MODEL_FILES := $(foreach t,$(TRACK),$(SAMPLE_MODELS)/mdsr-tiny-$(t)/model/config.yaml)

.PHONY: submission sample-models
submission: $(STAMP) $(if $(filter $(SAMPLE_MANIFEST),$(MANIFEST)),sample-models)
	$(PY) -m ntire submit --manifest $(MANIFEST) --track $(TRACK) $(if $(strip $(SCALES)),--scales $(SCALES)) $(if $(SPLIT),--split $(SPLIT)) $(if $(DATA),--data $(DATA))

# The sample manifest's small models, one per track in TRACK; `runs/demo/model` (`make demo`)
# serves bicubic x2 instead when it exists.
sample-models: $(SAMPLE_MODEL_FILES)

# Order-only on the venv: reinstalling packages must not retrain a finished model.
$(SAMPLE_MODELS)/mdsr-tiny-%/model/config.yaml: | $(STAMP)
	$(PY) -m ntire data sample --out $(SAMPLE_DATA)
	$(PY) -m ntire train --config $(SAMPLE_MODEL_CONFIG) --data $(SAMPLE_DATA) --track $* --output-dir $(SAMPLE_MODELS)/mdsr-tiny-$*
