"""The bench's label-diversity figure: distinct labels per batch against random batches, per order."""

from __future__ import annotations

import json
from math import comb

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdl_gpu.cli import main
from scdl_gpu.convert import convert_many
from scdl_gpu.profiling import format_bench, run_bench
from scdl_gpu.profiling._bench import random_distinct

N, GROUPS = 2000, 20


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """The same cells as a grouped (input order) and a shuffled archive: 20 drugs of 100 rows, in runs."""
    d = tmp_path_factory.mktemp("diversity")
    obs = pd.DataFrame({"drug": pd.Categorical(np.repeat([f"drug{i}" for i in range(GROUPS)], N // GROUPS))},
                       index=[f"c{i}" for i in range(N)])
    x = sp.random(N, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    ad.AnnData(X=x, obs=obs).write_h5ad(d / "in.h5ad")
    plain = convert_many([d / "in.h5ad"], d / "plain", use_X_not_raw=True).archive
    shuffled = convert_many([d / "in.h5ad"], d / "shuffled", use_X_not_raw=True, row_order="shuffle", seed=0).archive
    return plain, shuffled


def test_random_expectation_is_exact():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 1)
    for b in (1, 2, 4, 9):
        want = sum(1 - comb(9 - m, b) / comb(9, b) for m in (5, 3, 1))
        assert random_distinct(labels, b) == pytest.approx(want, rel=1e-12)
    assert random_distinct(labels, 20) == pytest.approx(3)  # a batch larger than the archive holds every label


def test_block_order_mixes_only_on_a_shuffled_archive(grouped):
    plain, shuffled = grouped
    kw = dict(device="cpu", shuffles=["sequential", "block"], batch_sizes=[64], seconds=0.3, warmup=0, ceilings=False,
              diversity_column="drug", block_size=32)  # two blocks a batch
    seq_plain, block_plain = run_bench(plain, **kw)["results"]
    seq_shuf, block_shuf = (r := run_bench(shuffled, **kw))["results"]
    want = random_distinct(np.repeat(np.arange(GROUPS), N // GROUPS), 64)
    for x in (seq_plain, block_plain, seq_shuf, block_shuf):
        assert x["random_distinct_labels"] == pytest.approx(want) and x["diversity_batches"] > 0
        assert x["diversity_of_random"] == pytest.approx(x["distinct_labels"] / want)
    assert seq_plain["distinct_labels"] <= 2  # 64-row runs of a 100-row group: one or two drugs
    assert block_plain["distinct_labels"] <= 4
    assert seq_shuf["diversity_of_random"] > 0.9 and block_shuf["diversity_of_random"] > 0.9
    json.loads(json.dumps(r))
    assert r["settings"]["diversity_column"] == "drug"
    assert "distinct drug (random)" in format_bench(r)


def test_command_line_and_a_missing_column(grouped, capsys):
    _, shuffled = grouped
    argv = ["bench", str(shuffled), "--device", "cpu", "--shuffle", "block", "--batch-size", "64", "--seconds", "0.2",
            "--warmup", "0", "--no-ceilings", "--quiet"]
    assert main(argv + ["--diversity-column", "drug"]) == 0
    assert "distinct drug (random)" in capsys.readouterr().out
    assert main(argv + ["--diversity-column", "dose"]) != 0
    assert "obs column 'dose' is in none of the" in capsys.readouterr().err
