# Two commands for a fresh machine: `make demo` (the main job on the embedded sample data) and
# `make test` (the whole suite). Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= all,dev
DEEPSPEED_VERSION ?= 0.19.8

.PHONY: venv demo test lint bench gpu-check clean

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

# The linter first: a few seconds, and CI enforces it. Tiers: `make test` runs the fast one (every
# test not marked slow: under 3 minutes on 2 cores); `make test TIER=all` runs everything (CI's
# .ci/run does): the multi-process, DeepSpeed, Ray-cluster, MLflow-server, GPU-smoke and fault-soak tests.
TIER ?= fast
PYTEST_TIER_fast := -m "not slow"
PYTEST_TIER_all :=
test: lint
	@test -n "$(filter $(TIER),fast all)" || { echo "make test: TIER must be fast or all, got '$(TIER)'" >&2; exit 2; }
	$(PY) -m pytest -q $(PYTEST_TIER_$(TIER)) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The GPU proof (benchmarks/gpu/): every GPU path checked and measured in under 6 minutes, the
# report written to $(GPU_OUT) as it goes. `make gpu-check GPU_ARGS=--smoke` runs it on the CPU.
GPU_OUT ?= runs/gpu-check
GPU_ARGS ?=
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu --out $(GPU_OUT) $(GPU_ARGS)

bench: $(STAMP)
	# benchmarks/gpu needs a CUDA device (make gpu-check); the others run anywhere.
	for b in inference loader train_step faults; do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs data

# `make submission TRACK={bicubic,unknown} [SCALES="2 3 4"] [SPLIT=test|valid] [DATA=DIR] [MANIFEST=...]`:
# validated challenge zips per scale (see submissions/README.md). `ntire submit` never trains, so
# for the sample manifest (the default) this first makes what that manifest reads (`sample-models`),
# each model skipped once its export exists. With no arguments: the sample data's valid split,
# bicubic track, and the table of model vs bicubic PSNR per scale. Its models:
#   x2  the demo's EDSR-baseline (`ntire demo`, as `make demo`): when runs/demo/model is
#       missing this trains it first, about 8.5 min on 2 CPU cores;
#   x3, x4  EDSR-baseline fine-tuned from that x2 (`--init-from`, all but the upsampler), a few
#       minutes each on 2 cores: submissions/train/sample_x{3,4}_from_demo.yaml.
# TRACK=unknown: x2, x3 and x4 all fine-tuned from the demo's x2 on the unknown-track pairs
# (submissions/train/sample_x{2,3,4}_from_demo.yaml), after making the demo's model if missing.
TRACK ?= bicubic
SAMPLE_MANIFEST := submissions/sample.yaml
MANIFEST ?= $(SAMPLE_MANIFEST)
SCALES ?=
SPLIT ?=
DATA ?=
# Where submissions/sample.yaml looks for its data and models: change them together.
SAMPLE_DATA := data/sample
SAMPLE_MODELS := runs/submissions/sample-models
DEMO_MODEL := runs/demo/model
# The exported models the sample manifest reads, per track. A model counts as made once its
# export is whole: config.yaml is written after model.safetensors.
SAMPLE_MODELS_bicubic := $(DEMO_MODEL) $(SAMPLE_MODELS)/edsr-baseline-x3-bicubic/model $(SAMPLE_MODELS)/edsr-baseline-x4-bicubic/model
SAMPLE_MODELS_unknown := $(foreach s,2 3 4,$(SAMPLE_MODELS)/edsr-baseline-x$(s)-unknown/model)
SAMPLE_MODEL_FILES := $(foreach t,$(TRACK),$(addsuffix /config.yaml,$(SAMPLE_MODELS_$(t))))

.PHONY: submission sample-models
submission: $(STAMP) $(if $(filter $(SAMPLE_MANIFEST),$(MANIFEST)),sample-models)
	$(PY) -m ntire submit --manifest $(MANIFEST) --track $(TRACK) $(if $(strip $(SCALES)),--scales $(SCALES)) $(if $(SPLIT),--split $(SPLIT)) $(if $(DATA),--data $(DATA))

# The sample manifest's models for each track in TRACK (the demo's x2 first: the others start
# from it). Order-only on the venv: reinstalling packages must not retrain a finished model; and
# on the demo's model: a newer demo does not redo a fine-tune (delete its folder for that).
sample-models: $(SAMPLE_MODEL_FILES)

$(DEMO_MODEL)/config.yaml: | $(STAMP)
	$(PY) -m ntire demo

# edsr-baseline-x<S>-<TRACK>: scale S on TRACK's pairs, from the demo's x2, with
# submissions/train/sample_x<S>_from_demo.yaml (`resume: auto`: an interrupted one continues).
$(SAMPLE_MODELS)/edsr-baseline-x%/model/config.yaml: | $(STAMP) $(DEMO_MODEL)/config.yaml
	$(PY) -m ntire data sample --out $(SAMPLE_DATA)
	$(PY) -m ntire train --config submissions/train/sample_x$(firstword $(subst -, ,$*))_from_demo.yaml --init-from $(DEMO_MODEL) --data $(SAMPLE_DATA) --track $(lastword $(subst -, ,$*)) --output-dir $(SAMPLE_MODELS)/edsr-baseline-x$*
