"""Weighted sampling: shares of draws per group (atlas member, input) and per class (an obs
column's value), turned into epochs of rows drawn with replacement.

Every row falls in one *cell*, a (group, class) pair. A draw picks a group by its share, then a
class by its share among the classes that group holds, then a row uniformly inside that cell, so
the group shares hold exactly and each group's rows are balanced among its classes. An epoch draws
cells from their small distribution, then rows through one stable sort of the rows by cell
(made once): time and memory per epoch grow with the epoch length, never with a probability per
row, and the sort costs one int32 per row below 2**31 rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

MISSING_LABEL = None
"""Class label of rows without a value (categorical code -1 or NaN): a class of its own."""


@dataclass(frozen=True)
class Weighting:
    """Rows sorted by cell, where each cell starts, and each cell's share of the draws."""

    rows_by_cell: np.ndarray  # row ids, stable-sorted by cell
    starts: np.ndarray  # int64, n_cells + 1: cell c holds rows_by_cell[starts[c]:starts[c + 1]]
    p: np.ndarray  # float64 per cell, sums to 1; 0 for cells never drawn

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows drawn with replacement, in random order (``rows_by_cell``'s dtype): how
        many draws each cell gets (multinomial in the shares), that many positions uniformly
        inside the cell, then one shuffle of the rows (no per-draw gather of cell bounds)."""
        counts = rng.multinomial(n, self.p)
        pos = np.empty(n, np.int64)
        at = 0
        for c in np.flatnonzero(counts):
            pos[at : at + counts[c]] = rng.integers(self.starts[c], self.starts[c + 1], counts[c])
            at += counts[c]
        rows = self.rows_by_cell[pos]
        rng.shuffle(rows)
        return rows


def class_codes(values: np.ndarray, categories: list | None) -> tuple[list, np.ndarray]:
    """The labels of an obs column and each row's index into them; missing values get the label
    :data:`MISSING_LABEL` (last). ``categories`` is given for an encoded (categorical) column."""
    if categories is not None:
        codes, labels = values.astype(np.int64), list(categories)
        missing = codes < 0
    else:
        missing = np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
        present, codes = np.unique(values[~missing], return_inverse=True)
        labels, full = present.tolist(), np.empty(len(values), np.int64)
        full[~missing] = codes
        codes = full
    if missing.any():
        codes[missing] = len(labels)
        labels.append(MISSING_LABEL)
    return labels, codes


def build_weighting(
    n_rows: int,
    groups: tuple[list[str], np.ndarray] | None = None,
    group_weights: Mapping[str, float] | None = None,
    classes: tuple[list, np.ndarray] | None = None,
    class_weights: Mapping | None = None,
    column: str = "",
) -> Weighting:
    """The cells of ``n_rows`` rows and their shares.

    ``groups``: (names, each row's group index); with ``group_weights`` (name → share; names left
    out get none) the groups' shares, else one group. ``classes``: (labels, each row's class
    index); with ``class_weights`` (label → share; labels left out get none) or, without, equal
    shares (balance). A group's class shares count only classes it holds.
    """
    g_names, g_ids = groups if group_weights is not None and groups is not None else (["all rows"], None)
    c_labels, c_ids = classes if classes is not None else ([None], None)
    g_share = (_shares(group_weights, g_names, "group_weights", "group", _name_matches)
               if group_weights is not None else np.ones(1))
    c_share = (_shares(class_weights, c_labels, "class_weights", f"label of obs column {column!r}", _label_matches)
               if class_weights is not None else np.ones(len(c_labels)))
    n_cells = len(g_names) * len(c_labels)
    cell = _cell_ids(n_rows, g_ids, c_ids, len(c_labels), n_cells)
    counts = np.bincount(cell, minlength=n_cells).reshape(len(g_names), len(c_labels)) if cell is not None \
        else np.array([[n_rows]], np.int64)
    within = np.where(counts > 0, c_share[None, :], 0.0)
    totals = within.sum(axis=1)
    for g in np.flatnonzero((g_share > 0) & (totals == 0)):
        what = "rows" if counts[g].sum() == 0 else "rows of a class with a positive weight"
        raise ValueError(f"group {g_names[g]!r} has a positive weight but no {what}")
    in_group = np.divide(within, totals[:, None], out=np.zeros_like(within), where=totals[:, None] > 0)
    p = (g_share[:, None] / g_share.sum() * in_group).ravel()
    p /= p.sum()
    index_dtype = np.int32 if n_rows < 2**31 else np.int64
    if cell is None:
        rows = np.arange(n_rows, dtype=index_dtype)
    else:  # small cell ids sort by radix (linear time)
        key = cell.astype(np.uint16) if n_cells <= 2**16 else cell
        rows = np.argsort(key, kind="stable").astype(index_dtype)
    return Weighting(rows, np.concatenate([[0], np.cumsum(counts.ravel())]).astype(np.int64), p)


def _cell_ids(n_rows: int, g_ids, c_ids, n_classes: int, n_cells: int) -> np.ndarray | None:
    if g_ids is None and c_ids is None:
        return None
    dtype = np.int32 if n_cells < 2**31 else np.int64
    cell = np.zeros(n_rows, dtype) if g_ids is None else np.asarray(g_ids).astype(dtype) * dtype(n_classes)
    if c_ids is not None:
        cell += np.asarray(c_ids).astype(dtype)
    return cell


def _shares(weights: Mapping, labels: Sequence, param: str, what: str, matches) -> np.ndarray:
    """One share per label from ``weights`` (labels left out: 0); errors name the bad key or value."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"{param} must be a non-empty dict of {what} -> weight, got {weights!r}")
    out = np.zeros(len(labels))
    for key, w in weights.items():
        score = [matches(key, lab) for lab in labels]  # an exact match beats an alias
        hits = [i for i, m in enumerate(score) if m and m == max(score)]
        if len(hits) != 1:
            listed = ", ".join(map(repr, labels[:20])) + (", ..." if len(labels) > 20 else "")
            why = "matches several" if hits else "is not a"
            raise ValueError(f"{param}: {key!r} {why} {what}; there are {len(labels)}: {listed}")
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{param}[{key!r}] must be a finite number >= 0, got {w!r}")
        out[hits[0]] = float(w)
    if not out.sum() > 0:
        raise ValueError(f"{param}: every weight is 0; at least one must be positive")
    return out


def _label_matches(key, label) -> int:
    if key is MISSING_LABEL or label is MISSING_LABEL:
        return int(key is label)
    return int(bool(key == label))


def _name_matches(key, name: str) -> int:
    """A group is named by its full name (2; an input's path), or its file name or stem (1)."""
    if not isinstance(key, str) or not key:
        return 0
    return 2 if key == name else int(key in (PurePath(name).name, PurePath(name).stem))
