# Both targets create or reuse .venv and do all of the set-up themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lowbit-installed

.PHONY: demo test bench lint clean

# torch is pinned and installed first: the pin takes the CPU wheel this machine has,
# while an unpinned torch would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

# The main job: quantize the bundled MiniLM with the default recipe (a8w4), measure it
# against FP32 in the same process, and save it under out/.
demo: $(STAMP)
	$(VENV)/bin/lowbit quantize

test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) benchmarks/quantize.py
	$(PY) benchmarks/calibration.py
	$(PY) benchmarks/gemm.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info
