"""``SingleCellCollection``: bionemo-scdl's many-archives container, and ``flatten`` into one.

Same methods and results as upstream, with its bugs fixed: inputs with the same file stem get
distinct member directories, ``load_h5ad`` takes ``data_dtype``, a failed ``load_h5ad_multi``
leaves no members behind, and ``flatten`` streams every member into a new archive (header and
metadata rebuilt, neighbors concatenated) and refuses an existing output instead of nesting into it.
For converting many files straight into one archive, :func:`scdl_gpu.convert_many` is faster:
it skips the intermediate member archives.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
from pathlib import Path

from .archive._concat import DEFAULT_CHUNK, concat_archives
from .archive._constants import SCDL_PACKAGE_VERSION, FileNames
from .archive._feature_index import VariableFeatureIndex
from .archive._writer import write_json
from .convert import convert_h5ad
from .dataset import SingleCellMemMapDataset


class SingleCellCollection:
    """A directory of member archives, one per converted ``.h5ad`` file (keyed by member path)."""

    def __init__(self, data_path: str | os.PathLike) -> None:
        self.data_path = data_path
        self._version = SCDL_PACKAGE_VERSION
        self.metadata: dict[str, int] = {}
        self._var_feature_index = VariableFeatureIndex()
        self.fname_to_mmap: dict[Path, SingleCellMemMapDataset] = {}
        Path(data_path).mkdir(parents=True, exist_ok=True)
        version = Path(data_path) / FileNames.VERSION.value
        if not version.exists():
            write_json(version, self._version)

    def version(self) -> str:
        return self._version

    # -- loading ------------------------------------------------------------------------------
    def _member_paths(self, h5ad_paths: list[Path]) -> list[Path]:
        """``<data_path>/<stem>``, suffixed ``_2``, ``_3`` … when a stem is already taken.

        A member is always a new, visible entry of the collection directory: a stem such as
        ``.`` (from ``..h5ad``) or ``..`` would name the collection or its parent, and hidden
        names are the archive writer's temporary siblings, so leading dots become ``_``.
        """
        taken = set(self.fname_to_mmap)
        out = []
        for p in h5ad_paths:
            base = Path(self.data_path) / _member_name(Path(p).stem)
            candidate, k = base, 1
            while candidate in taken or os.path.lexists(candidate):  # a dangling link is taken too
                k += 1
                candidate = base.with_name(f"{base.name}_{k}")
            if candidate.parent != Path(self.data_path) or candidate.name in ("", ".", ".."):
                raise ValueError(f"{p}: cannot make a member directory for it inside {self.data_path}")
            taken.add(candidate)
            out.append(candidate)
        return out

    def _add(self, member: Path) -> None:
        ds = SingleCellMemMapDataset(member)
        self.fname_to_mmap[member] = ds
        self._var_feature_index.concat(ds.var_features())

    def load_h5ad(
        self,
        h5ad_path: str | os.PathLike,
        paginated_load_cutoff: int = 10_000,
        load_block_row_size: int = 1_000_000,
        use_X_not_raw: bool = False,
        data_dtype: str | None = None,
    ) -> None:
        """Convert one AnnData file into a new member archive."""
        (member,) = self._member_paths([Path(h5ad_path)])
        convert_h5ad(
            h5ad_path,
            member,
            data_dtype=data_dtype,
            use_X_not_raw=use_X_not_raw,
            paginated_load_cutoff=paginated_load_cutoff,
            load_block_row_size=load_block_row_size,
            keep_column_order=True,  # upstream's API: the same bytes as upstream's conversion
        )
        self._add(member)

    def load_h5ad_multi(
        self,
        directory_path: str | os.PathLike,
        max_workers: int = 5,
        use_processes: bool = False,
        data_dtype: str | None = None,
        paginated_load_cutoff: int = 10_000,
        load_block_row_size: int = 1_000_000,
        use_X_not_raw: bool = False,
    ) -> None:
        """Convert every ``*.h5ad`` under ``directory_path`` (recursively, in sorted order).

        ``max_workers`` files are converted at once, by threads or (``use_processes``) by
        processes; each holds one row block at a time. If any file fails, the members made by
        this call are removed and ``RuntimeError("Error in processing file <path>: ...")`` is raised.
        """
        directory = Path(directory_path)
        h5ads = sorted(directory.rglob("*.h5ad"))
        if not h5ads:
            raise FileNotFoundError(f"There a no h5ad files in {directory}.")
        members = self._member_paths(h5ads)
        kwargs = dict(
            data_dtype=data_dtype,
            use_X_not_raw=use_X_not_raw,
            paginated_load_cutoff=paginated_load_cutoff,
            load_block_row_size=load_block_row_size,
            keep_column_order=True,  # upstream's API: the same bytes as upstream's conversion
        )
        if use_processes:
            pool = cf.ProcessPoolExecutor(max_workers, mp_context=mp.get_context("spawn"))
        else:
            pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="scdl-collection")
        failed: tuple[Path, BaseException] | None = None
        with pool:
            futures = [pool.submit(convert_h5ad, src, dst, **kwargs) for src, dst in zip(h5ads, members)]
            for src, fut in zip(h5ads, futures):
                try:
                    fut.result()
                except Exception as e:
                    if failed is None:
                        failed = (src, e)
                        for f in futures:
                            f.cancel()
        if failed is not None:
            for m in members:
                shutil.rmtree(m, ignore_errors=True)
            src, e = failed
            raise RuntimeError(f"Error in processing file {src}: {e}") from e
        for m in members:
            self._add(m)

    # -- sizes --------------------------------------------------------------------------------
    def number_nonzero_values(self) -> int:
        return sum(ds.number_nonzero_values() for ds in self.fname_to_mmap.values())

    def number_of_values(self) -> int:
        return sum(ds.number_of_values() for ds in self.fname_to_mmap.values())

    def number_of_rows(self) -> int:
        """Rows of all members; a var index that disagrees raises ``ValueError`` (as upstream)."""
        rows = sum(ds.number_of_rows() for ds in self.fname_to_mmap.values())
        if len(self._var_feature_index) > 0 and self._var_feature_index.number_of_rows() != rows:
            raise ValueError(
                f"The number of rows in the feature index {self._var_feature_index.number_of_rows()} "
                f"does not correspond to the number of rows in the datasets {rows}"
            )
        return rows

    def number_of_variables(self) -> list[int]:
        """Genes per var block (one entry per distinct consecutive gene table); ``[0]`` when empty."""
        if len(self._var_feature_index) == 0:
            return [0]
        return list(self._var_feature_index.column_dims())

    def shape(self) -> tuple[int, list[int]]:
        return self.number_of_rows(), self.number_of_variables()

    def sparsity(self) -> float:
        total = self.number_of_values()
        return (total - self.number_nonzero_values()) / total if total else 0.0

    # -- flatten ------------------------------------------------------------------------------
    def flatten(
        self,
        output_path: str | os.PathLike,
        destroy_on_copy: bool = False,
        extend_copy_size: int = DEFAULT_CHUNK,
    ) -> None:
        """Write every member, in order, into one new archive at ``output_path``.

        Rows are streamed ``extend_copy_size`` values at a time into a temporary sibling that is
        renamed when complete; values widen to the widest member dtype (mixing integer and float
        members raises ``ValueError`` naming them). With ``destroy_on_copy`` the collection
        directory is deleted afterwards.
        """
        if not self.fname_to_mmap:
            raise ValueError(f"The collection at {self.data_path} is empty: nothing to flatten.")
        out = Path(output_path)
        if out.exists():
            raise FileExistsError(f"Output path already exists: {out}; choose a new path (flatten never writes into one)")
        members = list(self.fname_to_mmap)
        moved = False
        if len(members) == 1 and destroy_on_copy:
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(members[0], out)  # atomic on one filesystem; otherwise copy below
                moved = True
            except OSError:
                pass
        if not moved:
            concat_archives(members, out, chunk=max(1, int(extend_copy_size)))
        if destroy_on_copy:
            self.fname_to_mmap.clear()
            self._var_feature_index = VariableFeatureIndex()
            shutil.rmtree(self.data_path, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SingleCellCollection({str(self.data_path)!r}, members={len(self.fname_to_mmap)})"


def _member_name(stem: str) -> str:
    """A file stem as a safe single path component inside the collection directory."""
    name = stem.replace(os.sep, "_").replace("\0", "_")
    if os.altsep:
        name = name.replace(os.altsep, "_")
    stripped = name.lstrip(".")
    name = "_" * (len(name) - len(stripped)) + stripped
    return name or "member"

