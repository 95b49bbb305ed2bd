"""Dtype rules of the format: the smallest unsigned index types and the data-dtype families."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from ._constants import FLOAT_ORDER, INT_ORDER

ALLOWED_DATA_DTYPES = INT_ORDER + FLOAT_ORDER


def smallest_uint_dtype(x: int) -> str:
    """Name of the smallest unsigned dtype that holds ``x`` (upstream thresholds: ``x < 2**bits``)."""
    x = int(x)
    if x < 0:
        raise ValueError("Negative numbers can't be unsigned.")
    for name in INT_ORDER:
        if x < 2 ** (np.dtype(name).itemsize * 8):
            return name
    raise ValueError(f"Value {x} is too large for any unsigned dtype (max uint64).")


def col_dtype_for(n_vars: int) -> str:
    """Column-index dtype for a matrix with ``n_vars`` columns (``smallest_uint_dtype(n_vars - 1)``)."""
    # A zero-column matrix stores no column indices; upstream raises here, we give it uint8.
    return smallest_uint_dtype(max(int(n_vars) - 1, 0))


def determine_dtype(dtypes: Iterable[str | np.dtype]) -> str:
    """Widest dtype of one family (all unsigned ints or all floats); mixing families raises."""
    names = [np.dtype(d).name for d in dtypes]
    if not names:
        raise ValueError("No dtypes to merge.")
    for order in (INT_ORDER, FLOAT_ORDER):
        if all(n in order for n in names):
            return max(names, key=order.index)
    raise ValueError(f"Mixed float and integer dtype families not allowed: {sorted(set(names))}")


def check_data_dtype(dtype: str | np.dtype | None) -> str:
    """Normalise a user-given data dtype; ``None`` means float32, anything outside the format raises."""
    if dtype is None:
        return "float32"
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in ALLOWED_DATA_DTYPES:
        raise ValueError(f"Invalid data_dtype '{dtype}'. Must be one of: {', '.join(ALLOWED_DATA_DTYPES)}")
    return name


def cast_checked(values: np.ndarray, dtype: str, tolerance: float, where: str, allow_lossy: bool = True) -> np.ndarray:
    """Cast ``values`` to ``dtype`` the way the format stores them, refusing silent garbage.

    Values that an integer dtype cannot hold at all (negative, too large, NaN, inf) raise
    ``ValueError`` instead of wrapping around as ``astype`` would. Precision loss beyond
    ``tolerance`` (fractions into integers, float64 into float32) gives upstream's
    ``UserWarning``, or with ``allow_lossy=False`` a ``ValueError``.
    """
    target = np.dtype(dtype)
    if values.dtype == target:
        return values
    if target.kind == "u" and values.size:
        info = np.iinfo(target)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError(f"{where}: non-finite values cannot be stored as {target.name}.")
        lo, hi = values.min(), values.max()
        if lo < 0 or hi > info.max:
            raise ValueError(
                f"{where}: values range from {lo} to {hi}, outside what {target.name} can hold "
                f"(0 to {info.max}); choose a wider data_dtype."
            )
    cast = values.astype(target)
    if not np.can_cast(values.dtype, target, "safe") and values.size:
        # Compare in float64 so the check itself does not overflow or round.
        diff = np.abs(cast.astype(np.float64) - values.astype(np.float64))
        max_diff = float(np.nanmax(diff)) if diff.size else 0.0
        if max_diff > tolerance and not allow_lossy:
            raise ValueError(
                f"{where}: {target.name} would change stored values (max abs diff {max_diff}, tolerance {tolerance}); "
                "pass allow_lossy=True to cast anyway"
            )
        if max_diff > tolerance:
            warnings.warn(
                f"{where}: Downcasted data values for 'data.npy' are not close to original values. "
                f"Max abs diff: {max_diff}",
                UserWarning,
                stacklevel=3,
            )
    return cast
