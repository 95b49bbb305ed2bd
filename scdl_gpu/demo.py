"""Quick start: convert an h5ad file, open the archive, stream one shuffled epoch with SingleCellLoader.

    python -m scdl_gpu.demo tests/data/cxg_small_perturbations.h5ad
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from . import SingleCellLoader, SingleCellMemMapDataset
from .convert import convert_h5ad


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("h5ad", type=Path, help="input AnnData file")
    p.add_argument("--archive", type=Path, help="where to write the archive (default: a temporary directory)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--use-raw", action="store_true", help="convert raw.X instead of X")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

    with tempfile.TemporaryDirectory() as tmp:
        archive = args.archive or Path(tmp) / (args.h5ad.stem + ".scdl")
        t0 = time.perf_counter()
        convert_h5ad(args.h5ad, archive, use_X_not_raw=not args.use_raw, progress=True)
        t_convert = time.perf_counter() - t0
        ds = SingleCellMemMapDataset(archive)
        print(f"converted {args.h5ad.name} in {t_convert:.2f} s -> {archive}")
        print(f"archive: {ds.number_of_rows()} cells x {ds.number_of_variables()[0]} genes, "
              f"{ds.number_nonzero_values()} stored values, dtypes {ds.dtypes['data.npy']}/"
              f"{ds.dtypes['col_ptr.npy']}/{ds.dtypes['row_ptr.npy']}")

        loader = SingleCellLoader(archive, batch_size=args.batch_size, shuffle="random", seed=args.seed, device="auto")
        cells = nnz = batches = 0
        t0 = time.perf_counter()
        for b in loader:
            x = b["X"]
            cells += x.shape[0]
            nnz += x.values().numel()
            batches += 1
            if batches == 1:
                print(f"first batch ({loader.backend.device}): layout={x.layout} shape={tuple(x.shape)} "
                      f"nnz={x.values().numel()} dtype={x.dtype}, rows {b['rows'][:4].tolist()}...")
        dt = time.perf_counter() - t0
        print(f"one shuffled epoch: {batches} batches, {cells} cells, {nnz} values in {dt:.3f} s "
              f"= {cells / dt:,.0f} cells/s")
        if cells != ds.number_of_rows():
            raise SystemExit(f"epoch covered {cells} cells, expected {ds.number_of_rows()}")


if __name__ == "__main__":
    main()
