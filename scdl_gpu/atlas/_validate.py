"""``scdl-gpu validate`` on an atlas: every member validated in full, every column map (and any
mapped columns: their checksum) checked, and each member compared with what ``atlas.json`` recorded when it was added."""

from __future__ import annotations

import os
from pathlib import Path

from ..archive._reader import open_arrays
from ..archive._validate import ValidationReport, validation_report
from ..errors import ArchiveError
from ._check import member_problems
from ._columns import verify_mapped_columns
from ._create import _gene_ids_of
from ._manifest import read_manifest


def validate_atlas(path: str | os.PathLike, *, quick: bool = False) -> ValidationReport:
    """The atlas's problems and notes, each member's prefixed with its name (never raises for damage)."""
    report = ValidationReport(Path(path))
    try:
        atlas = read_manifest(path)
    except (ArchiveError, OSError) as e:
        report.problems.append(str(e))
        return report
    verified = True
    for i, m in enumerate(atlas.members):
        tag = f"[member {m.name}] "
        sub = validation_report(atlas.member_path(i), quick=quick)
        report.problems += [tag + p for p in sub.problems]
        report.notes += [tag + n for n in sub.notes]
        verified &= sub.checksums_verified
        for check in (atlas.column_map, lambda i: verify_mapped_columns(atlas, i)):
            try:
                check(i)
            except (ArchiveError, OSError) as e:
                report.problems.append(tag + str(e))
        if sub.problems:
            continue  # comparing a broken member with the manifest would only repeat its problems
        try:
            a = open_arrays(atlas.member_path(i))
            genes = len(_gene_ids_of(atlas.member_path(i), atlas.gene_key))
            report.problems += [tag + p for p in member_problems(atlas, i, a.n_rows, int(a.nnz), str(a.data.dtype), genes)]
        except (ArchiveError, OSError, ValueError) as e:
            report.problems.append(tag + str(e))
    report.checksums_verified = verified and not report.problems
    return report


__all__ = ["validate_atlas"]
