"""``scdl_gpu.backend._residency``'s host-side index of resident rows: spans located the same way for a
contiguous share (no search) and any other share, missing rows refused by id."""

from __future__ import annotations

import numpy as np
import pytest

from scdl_gpu.backend._residency import ResidentIndex


def _index(rows, seed=0):
    rows = np.asarray(rows, np.int64)
    lengths = np.random.default_rng(seed).integers(0, 5, len(rows))  # empty rows too
    return ResidentIndex(rows, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)), lengths


def _expected(index, lengths, asked):
    local = [int(np.flatnonzero(index.rows == r)[0]) for r in asked]
    starts = index.ptr[local] if local else np.zeros(0, np.int64)
    return starts, np.concatenate([[0], np.cumsum(lengths[local])]).astype(np.int64)


@pytest.mark.parametrize("rows", [np.arange(50), np.arange(7, 57), np.array([2, 3, 5, 8, 13, 21, 34]), np.array([4])],
                         ids=["all", "range", "scattered", "one"])
def test_spans_match_a_brute_force_lookup(rows):
    index, lengths = _index(rows)
    assert (index._first is not None) == (rows[-1] - rows[0] + 1 == len(rows))
    rng = np.random.default_rng(1)
    for asked in (rng.choice(rows, 40), rows[::-1], np.array([rows[0], rows[0]]), np.array([], np.int64)):
        starts, out_ptr = index.locate(asked)
        want_starts, want_ptr = _expected(index, lengths, asked)
        np.testing.assert_array_equal(starts, want_starts)
        np.testing.assert_array_equal(out_ptr, want_ptr)
        assert starts.dtype == out_ptr.dtype == np.int64


@pytest.mark.parametrize("rows", [np.arange(7, 57), np.array([2, 3, 5, 8])], ids=["range", "scattered"])
@pytest.mark.parametrize("missing", [0, 4, 57, -1, 1 << 40])
def test_a_row_not_held_is_refused_by_id(rows, missing):
    index, _ = _index(rows)
    if missing in rows:
        return
    with pytest.raises(KeyError, match=f"row {missing} is not resident"):
        index.locate(np.array([rows[0], missing, rows[-1]]))


def test_an_empty_share_holds_nothing():
    index = ResidentIndex(np.zeros(0, np.int64), np.zeros(1, np.int64))
    starts, out_ptr = index.locate(np.zeros(0, np.int64))
    assert len(starts) == 0 and out_ptr.tolist() == [0]
    with pytest.raises(KeyError, match="row 0 is not resident"):
        index.locate(np.array([0]))
