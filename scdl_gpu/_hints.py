"""What to install for an optional part: packages from the index (scdl-gpu itself is not there),
or the extra from a checkout. Kept beside pyproject.toml's extras, which list the same packages."""

COMPRESS = "pip install numcodecs (from a scdl-gpu checkout: pip install -e '.[compress]')"

PLOT = "pip install matplotlib (from a scdl-gpu checkout: pip install -e '.[plot]')"

GPU = (
    "pip install 'cupy-cuda13x[ctk]' kvikio-cu13 for CUDA 13, or 'cupy-cuda12x[ctk]' kvikio-cu12 for CUDA 12 "
    "(from a scdl-gpu checkout: pip install -e '.[gpu-cu13]' or '.[gpu-cu12]')"
)

NVCOMP = (
    "pip install nvidia-nvcomp-cu13 for CUDA 13, or nvidia-nvcomp-cu12 for CUDA 12 (version 6 or later; from a "
    "scdl-gpu checkout the gpu extras bring it)"
)
