# `make demo` and `make test` each create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: an unpinned torch pulls the newest CUDA build (gigabytes).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo demo-generator test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,interop,timm]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/neuron-catalog run jobs/demo.toml
	$(VENV)/bin/neuron-catalog query catalogs/demo --layer conv3 --sort act_max --limit 10

# the generator demo (GAN Dissection): trains a small decoder and a segmenter on the concept world, then catalogs it
demo-generator: $(STAMP)
	$(VENV)/bin/neuron-catalog run jobs/demo_generator.toml
	$(VENV)/bin/neuron-catalog query catalogs/demo_generator --layer conv2 --sort iou --limit 10

test: $(STAMP)
	$(PY) -m pytest -q

# the developer's loop: everything but the `slow` fault-injection tests (subprocess runs killed or signalled, multi-node clusters)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# the benchmarks (run by hand; docs/BENCHMARKS.md has their figures): `make bench` lists each with its command,
# `make bench-NAME ARGS="..."` runs tests/benchmarks/bench_NAME.py
bench: $(STAMP)
	@$(PY) tests/benchmarks/list_benchmarks.py

bench-%: $(STAMP)
	$(PY) tests/benchmarks/bench_$*.py $(ARGS)

clean:
	rm -rf catalogs data
