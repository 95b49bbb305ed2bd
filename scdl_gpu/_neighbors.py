"""The neighbor half of the dataset API (spec §4.7): per-cell neighbor lists and sampling."""

from __future__ import annotations

import os
import warnings

import numpy as np

from .archive._constants import NeighborSamplingStrategy


class RowSlices(tuple):
    """A row's ``(values, columns)`` pair that also records its gene count for the collate."""

    scdl_num_cols: int | None = None

    def __new__(cls, values, columns, num_cols: int | None):
        row = super().__new__(cls, (values, columns))
        row.scdl_num_cols = num_cols
        return row

    def __reduce__(self):  # DataLoader workers pickle items: keep the gene count
        return RowSlices, (self[0], self[1], self.scdl_num_cols)


class NeighborMixin:
    """Needs ``_check_row``, ``_num_cols``, ``get_row``, ``get_row_padded`` from the dataset."""

    def _init_neighbors(self, load_neighbors, neighbor_key, strategy, fallback_to_identity) -> None:
        self.load_neighbors = load_neighbors
        if load_neighbors:
            try:
                strategy = NeighborSamplingStrategy(strategy)
            except ValueError:
                raise ValueError(f"Unsupported neighbor_sampling_strategy: {strategy}") from None
            self.neighbor_key = neighbor_key
            self.neighbor_sampling_strategy = strategy
            self.fallback_to_identity = fallback_to_identity
        self._rng = None
        self._rng_pid = None

    def _attach_neighbors(self, arrays) -> None:
        self._has_neighbors = arrays is not None
        self._neighbor_indptr, self._neighbor_indices, self._neighbor_data = arrays or (None, None, None)
        if self.load_neighbors and arrays is None:
            warnings.warn("Neighbor loading was requested but neighbor files are missing", UserWarning, stacklevel=3)

    def _neighbor_span(self, cell_index: int) -> tuple[int, int] | None:
        """None when neighbors are disabled; errors as upstream when enabled but unusable."""
        if not self.load_neighbors:
            return None
        n = self.number_of_rows()
        if not 0 <= cell_index < n:
            raise IndexError(f"Cell index {cell_index} out of bounds for dataset with {n} cells")
        if not self._has_neighbors:
            raise ValueError("Neighbor functionality was enabled but no neighbor data is available")
        return int(self._neighbor_indptr[cell_index]), int(self._neighbor_indptr[cell_index + 1])

    def get_neighbor_indices_for_cell(self, cell_index: int) -> np.ndarray:
        span = self._neighbor_span(cell_index)
        return np.array([], dtype=np.uint32) if span is None else self._neighbor_indices[span[0] : span[1]]

    def get_neighbor_weights_for_cell(self, cell_index: int) -> np.ndarray:
        span = self._neighbor_span(cell_index)
        return np.array([], dtype=np.float32) if span is None else self._neighbor_data[span[0] : span[1]]

    def _generator(self) -> np.random.Generator:
        # One generator per process: forked DataLoader workers must not replay the same stream.
        if self._rng_pid != os.getpid():
            self._rng, self._rng_pid = np.random.default_rng(), os.getpid()
        return self._rng

    def sample_neighbor_index(self, cell_index: int) -> int:
        """A neighbor of the cell (random or first, by strategy); the cell itself if it has none."""
        span = self._neighbor_span(cell_index)
        if span is None:
            return cell_index
        lo, hi = span
        if hi == lo:
            if not self.fallback_to_identity:
                warnings.warn(f"Cell {cell_index} has no neighbors; returning the cell itself", UserWarning, stacklevel=2)
            return cell_index
        if self.neighbor_sampling_strategy is NeighborSamplingStrategy.FIRST:
            return int(self._neighbor_indices[lo])
        return int(self._neighbor_indices[lo + int(self._generator().integers(hi - lo))])

    def _with_neighbor(self, getter, index, *flags):
        if not (self.load_neighbors and self._has_neighbors):
            raise ValueError(
                "Cannot include neighbor data: neighbor functionality is disabled or no neighbor data available"
            )
        i = self._check_row(index)
        j = self.sample_neighbor_index(i)
        cur, var, obs = getter(i, *flags)
        nxt, _, _ = getter(j, *flags)
        return {
            "current_cell": cur,
            "next_cell": nxt,
            "current_cell_index": i,
            "next_cell_index": j,
            "var_features": var,
            "obs_features": obs,
        }

    def _get_row_slices(self, i: int, *flags):
        (values, columns), var, obs = self.get_row(i, *flags)
        return RowSlices(values, columns, self._num_cols(i)), var, obs

    def get_row_with_neighbor(self, index: int, return_var_features=False, var_feature_names=None, return_obs_features=False, obs_feature_names=None) -> dict:
        """Current and sampled next cell; each ``(values, columns)`` pair records the gene count
        (``scdl_num_cols``), so ``collate_neighbor_sparse_matrix_batch`` batches are that wide."""
        return self._with_neighbor(self._get_row_slices, index, return_var_features, var_feature_names, return_obs_features, obs_feature_names)

    def get_row_padded_with_neighbor(self, index: int, return_var_features=False, var_feature_names=None, return_obs_features=False, obs_feature_names=None) -> dict:
        return self._with_neighbor(self.get_row_padded, index, return_var_features, var_feature_names, return_obs_features, obs_feature_names)

    def get_neighbor_stats(self) -> dict:
        if not self._has_neighbors:
            return {"has_neighbors": False}
        counts = np.diff(np.asarray(self._neighbor_indptr, dtype=np.int64))
        return {
            "has_neighbors": True,
            "total_connections": int(counts.sum()),
            "min_neighbors_per_cell": int(counts.min()) if counts.size else 0,
            "max_neighbors_per_cell": int(counts.max()) if counts.size else 0,
            "avg_neighbors_per_cell": float(counts.mean()) if counts.size else 0.0,
            "cells_with_no_neighbors": int((counts == 0).sum()),
        }
