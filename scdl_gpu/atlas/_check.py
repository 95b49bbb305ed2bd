"""Is each member still the archive the manifest recorded? (Readers raise the first problem;
``scdl-gpu validate`` reports them all.)"""

from __future__ import annotations

from ..archive._checksums import recorded_checksum
from ._manifest import MANIFEST, Atlas


def member_problems(atlas: Atlas, i: int, n_rows: int, n_values: int, data_dtype: str, n_genes: int) -> list[str]:
    """What disagrees between member ``i`` as opened (its rows, values, value dtype, gene count and
    recorded checksum) and as ``atlas.json`` recorded it when the member was added."""
    m, path = atlas.members[i], atlas.member_path(i)
    where = f"{path}: atlas member {m.name!r}"
    problems = []
    if m.checksum is not None:
        now = recorded_checksum(path)
        if now != m.checksum:
            what = "has no checksum manifest any more" if now is None else "has other checksums"
            problems.append(f"{where} {what} than when it was added to {atlas.root / MANIFEST}: the archive was "
                            "replaced or changed; add it to the atlas again (or re-create the atlas)")
    found = dict(rows=n_rows, values=n_values, dtype=str(data_dtype), genes=n_genes)
    recorded = dict(rows=m.n_rows, values=m.n_values, dtype=m.data_dtype, genes=m.n_genes)
    for key in found:
        if found[key] != recorded[key]:
            problems.append(f"{where} has {key} {found[key]}; {MANIFEST} records {recorded[key]}")
    return problems


__all__ = ["member_problems"]
