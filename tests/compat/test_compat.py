"""scdl_gpu.compat: upstream's import paths answered by scdl_gpu, opt-in and reversible.

Each case runs in a fresh interpreter: this test process has the real bionemo-scdl (the 0.1.3
wheel) imported, which is exactly the state in which ``install()`` must refuse.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scdl_gpu import SingleCellMemMapDataset, collate_sparse_matrix_batch
from tests.conftest import make_adata, random_csr

ROOT = Path(__file__).resolve().parents[2]


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _check(code: str, tmp_path: Path) -> str:
    done = _python(["-c", textwrap.dedent(code)], tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_never_active_by_default(tmp_path):
    """Importing scdl_gpu (or scdl_gpu.compat) installs nothing: bionemo.scdl stays the real one."""
    _check(
        """
        import sys
        import scdl_gpu, scdl_gpu.dataset, scdl_gpu.collate, scdl_gpu.compat
        assert not scdl_gpu.compat.installed()
        assert not any(type(f).__module__.startswith("scdl_gpu") for f in sys.meta_path)
        import bionemo.scdl.io.single_cell_memmap_dataset as m
        assert "site-packages" in m.__file__ and m.SingleCellMemMapDataset is not scdl_gpu.SingleCellMemMapDataset
        """,
        tmp_path,
    )


def test_every_upstream_module_resolves_or_says_why(tmp_path):
    _check(
        """
        import importlib, sys
        import pytest
        import scdl_gpu.compat as compat
        from scdl_gpu import SingleCellMemMapDataset, collate_sparse_matrix_batch
        from scdl_gpu.archive import FileNames, VariableFeatureIndex

        compat.install()
        compat.install()  # idempotent
        assert sum(type(f).__name__ == "UpstreamFinder" for f in sys.meta_path) == 1
        for name, stand in compat.MODULES.items():
            if stand.absent:
                with pytest.raises(ImportError, match="bionemo.scdl.(data|util).* is not provided by scdl_gpu.compat: "):
                    importlib.import_module(name)
                continue
            module = importlib.import_module(name)
            for attr in stand.names:
                assert getattr(module, attr) is not None, (name, attr)
            for attr in stand.missing:
                with pytest.raises(AttributeError, match=f"{name}.{attr} is upstream bionemo-scdl's"):
                    getattr(module, attr)
        from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as D, Mode
        from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch as c
        from bionemo.scdl.util.scdl_constants import FileNames as F
        from bionemo.scdl.index.row_feature_index import VariableFeatureIndex as V
        from bionemo.scdl.api.single_cell_row_dataset import SingleCellRowDataset
        from bionemo.scdl.schema.version import CurrentSCDLVersion
        assert (D, c, F, V) == (SingleCellMemMapDataset, collate_sparse_matrix_batch, FileNames, VariableFeatureIndex)
        assert issubclass(D, SingleCellRowDataset) and str(CurrentSCDLVersion()) == "0.1.0"
        with pytest.raises(ImportError, match="cannot import name 'HeaderReader'"):
            from bionemo.scdl.schema.header import HeaderReader
        with pytest.raises(ModuleNotFoundError, match="upstream bionemo-scdl has no such module"):
            import bionemo.scdl.nothing_here

        compat.uninstall()
        compat.uninstall()  # idempotent
        assert not compat.installed() and not [m for m in sys.modules if m.startswith("bionemo.scdl")]
        import bionemo.scdl.io.single_cell_memmap_dataset as real  # the wheel again
        assert real.SingleCellMemMapDataset is not SingleCellMemMapDataset
        with pytest.raises(RuntimeError, match="The real bionemo-scdl is already imported"):
            compat.install()
        """,
        tmp_path,
    )


def test_refuses_when_the_real_package_is_imported(tmp_path):
    _check(
        """
        import sys
        import pytest
        from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch  # the 0.1.3 wheel
        import scdl_gpu.compat
        with pytest.raises(RuntimeError, match=r"already imported \\(bionemo.scdl"):
            scdl_gpu.compat.install()
        assert not scdl_gpu.compat.installed()
        assert "site-packages" in sys.modules["bionemo.scdl.util.torch_dataloader_utils"].__file__
        """,
        tmp_path,
    )


def test_works_without_any_bionemo_installed(tmp_path):
    """With no real ``bionemo`` namespace on the path, the layer provides the parent package too."""
    _check(
        """
        import importlib.machinery, sys
        real_find = importlib.machinery.PathFinder.find_spec
        importlib.machinery.PathFinder.find_spec = classmethod(
            lambda cls, name, path=None, target=None: None if name.split(".")[0] == "bionemo" else real_find(name, path, target))
        import scdl_gpu.compat
        scdl_gpu.compat.install()
        from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch
        import bionemo
        assert bionemo.__spec__.origin == "scdl_gpu.compat"
        scdl_gpu.compat.uninstall()
        assert not [m for m in sys.modules if m.split(".")[0] == "bionemo"]
        """,
        tmp_path,
    )


UPSTREAM_SCRIPT = '''\
"""Written against bionemo-scdl: convert, reopen, iterate a DataLoader, read features."""
import json
import sys

from torch.utils.data import DataLoader

from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset
from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch

h5ad, out = sys.argv[1], sys.argv[2]
SingleCellMemMapDataset(out, h5ad_path=h5ad, use_X_not_raw=True)
ds = SingleCellMemMapDataset(out)
rows, values, cols = 0, 0.0, 0
for batch in DataLoader(ds, batch_size=8, shuffle=False, collate_fn=collate_sparse_matrix_batch):
    rows += batch.shape[0]
    values += float(batch.values().sum())
    cols = max(cols, batch.shape[1])
var, label = ds.var_features().lookup(3)
obs, _ = ds.obs_features().lookup(3, select_features=["donor"])
print(json.dumps({"argv": sys.argv, "name": __name__, "class": type(ds).__module__, "rows": rows,
                  "values": values, "cols": cols, "genes": [str(g) for g in var[0][:3]], "donor": str(obs[0]),
                  "label": label, "shape": [ds.number_of_rows(), ds.number_of_variables()]}))
'''


def test_unmodified_upstream_script_runs_on_scdl_gpu(tmp_path, write_h5ad):
    m = random_csr(20, 30, density=0.3, shuffle_cols=True, seed=5)
    h5ad = write_h5ad(make_adata(m))
    (tmp_path / "script.py").write_text(UPSTREAM_SCRIPT)
    done = _python(["-m", "scdl_gpu.compat", "script.py", str(h5ad), str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["argv"] == ["script.py", str(h5ad), str(tmp_path / "out")] and got["name"] == "__main__"
    assert got["class"] == "scdl_gpu.dataset"
    ours = SingleCellMemMapDataset(tmp_path / "out")  # what the script wrote, read without the layer
    batch = collate_sparse_matrix_batch([ours[i] for i in range(len(ours))])
    assert got["rows"] == 20 and got["cols"] == 30 == batch.shape[1] and got["shape"] == [20, [30]]
    assert got["values"] == pytest.approx(float(m.data.sum()))
    assert got["genes"] == ["ENSG00000000000", "ENSG00000000001", "ENSG00000000002"]
    assert got["donor"] == "d3" and got["label"] == str(h5ad)
    np.testing.assert_array_equal(ours.col_index, m.indices)  # upstream's input column order


def test_main_usage_errors(tmp_path):
    done = _python(["-m", "scdl_gpu.compat", "missing.py"], tmp_path)
    assert done.returncode == 2 and "can't open file 'missing.py'" in done.stderr
    done = _python(["-m", "scdl_gpu.compat"], tmp_path)
    assert done.returncode == 2 and "python -m scdl_gpu.compat script.py" in done.stderr
