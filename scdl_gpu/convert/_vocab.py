"""Gene vocabulary alignment: remap every input's columns onto one gene list.

Without alignment each input keeps its own columns (and its own var block), as upstream does.
With it, column ``j`` is the same gene in every row: genes absent from the vocabulary are
dropped, vocabulary genes absent from an input are implicit zeros.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConversionError
from ._copy import ColumnMap

UNION = "union"
INTERSECTION = "intersection"


@dataclass
class Alignment:
    """How one input's genes map onto the vocabulary."""

    columns: ColumnMap
    matched: int  # input genes found in the vocabulary
    dropped: int  # input genes whose values are not stored: not in the vocabulary, or repeats
    duplicates: int  # of the dropped: repeated gene ids (only the first occurrence is kept)
    missing: int  # vocabulary genes the input does not have


def gene_ids(var: pd.DataFrame, gene_key: str | None, where: str) -> np.ndarray:
    """The identifiers genes are matched by: the var index, or the column ``gene_key``."""
    if gene_key is None:
        return np.asarray(var.index.astype(str))
    if gene_key not in var.columns:
        raise ConversionError(f"{where}: var has no column {gene_key!r} (columns: {list(var.columns)})")
    return np.asarray(var[gene_key].astype(str))


def read_vocabulary_file(path: str | os.PathLike) -> np.ndarray:
    """One feature id per line (``.gz`` allowed; blank lines and ``#`` comments ignored).

    A tab- or comma-separated file uses its first field, so a 10x ``features.tsv`` works as is.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Gene vocabulary file not found: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as f:
        ids = [line.split("\t")[0].split(",")[0].strip() for line in f if line.strip() and not line.startswith("#")]
    if not ids:
        raise ConversionError(f"Gene vocabulary file {p} lists no genes")
    return np.asarray(ids, dtype=object)


def build_vocabulary(spec: str | os.PathLike | Sequence[str], inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The gene list: ``"union"`` / ``"intersection"`` of the inputs' ids, a file, or the ids given.

    Union keeps first-seen order over the inputs; intersection keeps the first input's order.
    """
    if isinstance(spec, str) and spec in (UNION, INTERSECTION):
        if not inputs:
            return np.empty(0, dtype=object)
        if spec == UNION:
            vocab = pd.unique(np.concatenate([np.asarray(i, dtype=object) for i in inputs]))
        else:
            common = pd.Index(pd.unique(np.asarray(inputs[0], dtype=object)))
            for ids in inputs[1:]:
                common = common[common.isin(ids)]
            vocab = np.asarray(common, dtype=object)
        if len(vocab) == 0:
            raise ConversionError(f"The {spec} of the inputs' genes is empty; check gene_key / the inputs")
        return np.asarray(vocab, dtype=object)
    if isinstance(spec, (str, os.PathLike)):
        vocab = read_vocabulary_file(spec)
    else:
        vocab = np.asarray(list(spec), dtype=object)
    dup = pd.Index(vocab)[pd.Index(vocab).duplicated()]
    if len(dup):
        raise ConversionError(f"The gene vocabulary repeats ids, e.g. {list(dup[:5])}; each gene must appear once")
    return vocab


def align(ids: np.ndarray, vocab: pd.Index) -> Alignment:
    """Map an input's gene ids onto ``vocab`` (a unique ``pd.Index``)."""
    ids = pd.Index(np.asarray(ids, dtype=object))
    new_of_old = vocab.get_indexer(ids).astype(np.int64)
    dup = ids.duplicated()
    new_of_old[dup] = -1  # two columns into one would store two values for one gene
    found = new_of_old >= 0
    matched = int(found.sum())
    return Alignment(
        columns=ColumnMap(new_of_old, len(vocab)),
        matched=matched,
        dropped=int(len(ids) - matched),
        duplicates=int(dup.sum()),
        missing=int(len(vocab) - matched),
    )
