# Quick start: `make demo` converts a bundled real h5ad and streams an epoch, then converts the whole
# bundled directory (h5ad and 10x inputs) into one gene-aligned archive; `make test` runs the tests.
# Both create the virtual environment from nothing. CPU installs pin torch through constraints-cpu.txt
# so no CUDA packages are pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test scripts bench-convert bench-convert-dir bench-atlas-convert bench-loader bench-shuffle bench-remote bench-atlas bench-compress gpu-kit gpu-check clean

# bionemo-scdl (in the test and bench extras) ships a convert_h5ad_to_scdl of its own, and pip may write
# it after ours. Reinstalling our package alone (no dependencies) writes our console scripts last; the
# check fails the install if the command is still not ours (bionemo-scdl's has no --overwrite).
define OUR_SCRIPTS
	$(PY) -m pip install --quiet --no-deps --force-reinstall -e .
	@$(VENV)/bin/convert_h5ad_to_scdl --help | grep -q -- --overwrite || \
	{ echo "$(VENV)/bin/convert_h5ad_to_scdl is not scdl_gpu's" >&2; exit 1; }
endef

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e ".[test,kernel-check]"
	$(OUR_SCRIPTS)
	touch $(STAMP)

# Run again after installing bionemo-scdl into the venv by hand.
scripts:
	$(OUR_SCRIPTS)

demo: $(STAMP)
	$(PY) -m scdl_gpu.demo tests/data/cxg_small_perturbations.h5ad
	@tmp=$$(mktemp -d) && \
	$(VENV)/bin/scdl-gpu convert tests/data -o $$tmp/bundled.scdl --use-X-not-raw --gene-vocab union --data-dtype auto && \
	$(VENV)/bin/scdl-gpu info $$tmp/bundled.scdl && $(VENV)/bin/scdl-gpu validate $$tmp/bundled.scdl && \
	$(VENV)/bin/scdl-gpu bench $$tmp/bundled.scdl --shuffle random block --batch-size 64 --seconds 1 --quiet; \
	rc=$$?; rm -rf $$tmp; exit $$rc

test: $(STAMP)
	$(PY) -m pytest -q

bench-convert: $(STAMP)
	$(PY) benchmarks/bench_convert.py --n-cells 200000 --json benchmarks/results/convert_cpu.json --markdown benchmarks/results/convert_cpu.md

bench-convert-dir: $(STAMP)
	$(PY) benchmarks/bench_convert_dir.py --repeats 3 --json benchmarks/results/convert_dir_cpu.json --markdown benchmarks/results/convert_dir_cpu.md

# 10 Tahoe-like inputs (made once under the temp dir) into an atlas on a 2-worker Dask LocalCluster, against
# `convert --workers 2` into one archive and `convert --atlas --workers 2` on threads (~5 minutes on 2 cores).
bench-atlas-convert: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_atlas_convert.py --repeats 3 --json benchmarks/results/atlas_convert_cpu.json --markdown benchmarks/results/atlas_convert_cpu.md

# Every loader measurement in one run (results/README.md says what it measures): scdl_gpu on its own,
# bionemo-scdl's and a gene-aligned conversion of the same cells, the peers (the bench extra), the
# memcpy ceilings and the stage profile. About 5 minutes on 2 cores once the archives exist (made once).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e ".[bench]"
	$(OUR_SCRIPTS)
	touch $(BENCH_STAMP)

bench-loader: $(BENCH_STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_loader.py --repeats 3 --out benchmarks/results

# Pre-shuffled archives on the same 200k Tahoe-like inputs: conversion time and peak memory under a 1 GB
# budget against plain conversion, block-order cells/s and label diversity on both archives (~10 minutes).
bench-shuffle: $(BENCH_STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_shuffle.py --repeats 3 --json benchmarks/results/shuffle_cpu.json --markdown benchmarks/results/shuffle_cpu.md

# Block order from a local S3 server (moto, the test extra) against local disk: a 40k-cell Tahoe-like archive,
# flat and chunked, and the range reader over file:// (~4 minutes on 2 cores once the archive exists).
bench-remote: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_remote.py --repeats 3 --json benchmarks/results/remote_cpu.json --markdown benchmarks/results/remote_cpu.md

# An atlas of 10 members (20k cells each, different gene sets) against the same rows flattened into one
# archive: block and random order, and members whose genes come in their own order (~8 minutes the first time).
bench-atlas: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_atlas.py --repeats 3 --out benchmarks/results

# Compressed archives: ratio and CPU decode GB/s per codec on the 200k Tahoe-like archive and every real
# file, block-order cells/s cold and warm against the flat archive (~5 minutes once the archive exists).
bench-compress: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_compress.py --repeats 5 --json benchmarks/results/compress_cpu.json --markdown benchmarks/results/compress_cpu.md

# A lent GPU machine has no network and no .venv, and only the checkout (plus named ignored paths)
# travels: `make gpu-kit` here copies the wheels its image lacks (and nvCOMP's, from $(GPU_KIT)-nvcomp:
# 47 MB in all) into .whl/ (git-ignored), the device
# call carries [".whl"] and runs `make gpu-check` there, with the image's python3. Here (no GPU) the
# same target is a dry run with the project's venv when it exists.
GPU_KIT ?= ../shared/gpu-kit/wheels
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-kit:
	@if [ -d "$(GPU_KIT)" ]; then mkdir -p .whl && cp "$(GPU_KIT)"/*.whl .whl/ && \
	  if [ -d "$(GPU_KIT)-nvcomp" ]; then cp "$(GPU_KIT)-nvcomp"/*.whl .whl/; fi && \
	  echo "$$(ls .whl/*.whl | wc -l) wheels ($$(du -sm .whl | cut -f1) MiB; a carry holds 64) in .whl/"; \
	else echo "no $(GPU_KIT): .whl/ left as it is"; fi

gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
