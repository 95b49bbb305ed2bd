# Quick start: `make demo` converts a bundled real h5ad and streams an epoch, then converts the whole
# bundled directory (h5ad and 10x inputs) into one gene-aligned archive; `make test` runs the tests.
# Both create the virtual environment from nothing. CPU installs pin torch through constraints-cpu.txt
# so no CUDA packages are pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench-convert bench-convert-dir clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e ".[test,kernel-check]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scdl_gpu.demo tests/data/cxg_small_perturbations.h5ad
	@tmp=$$(mktemp -d) && \
	$(VENV)/bin/scdl-gpu convert tests/data -o $$tmp/bundled.scdl --use-X-not-raw --gene-vocab union --data-dtype auto && \
	$(VENV)/bin/scdl-gpu info $$tmp/bundled.scdl && $(VENV)/bin/scdl-gpu validate $$tmp/bundled.scdl; \
	rc=$$?; rm -rf $$tmp; exit $$rc

test: $(STAMP)
	$(PY) -m pytest -q

bench-convert: $(STAMP)
	$(PY) benchmarks/bench_convert.py --n-cells 200000 --json benchmarks/results/convert_cpu.json --markdown benchmarks/results/convert_cpu.md

bench-convert-dir: $(STAMP)
	$(PY) benchmarks/bench_convert_dir.py --repeats 3 --json benchmarks/results/convert_dir_cpu.json --markdown benchmarks/results/convert_dir_cpu.md

clean:
	rm -rf $(VENV) build *.egg-info
