"""``convert_to_atlas`` on Dask distributed: a 2-worker LocalCluster of processes writes the same
members, byte for byte, as threads do; a worker killed mid-member leaves no partial member (the
retry removes it), and when the task fails for good no manifest is written and a resumed run
finishes the atlas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster

from scdl_gpu.atlas import is_atlas, open_atlas
from scdl_gpu.cli import main
from scdl_gpu.convert import convert_to_atlas
from scdl_gpu.errors import ConversionError
from tests.convert._dask_kill import KillMidMember
from tests.convert.atlas_inputs import assert_same_archive, no_partials, write_inputs

OPTIONS = dict(use_X_not_raw=True, member_rows=20, max_block_values=100)  # a few blocks per member


@pytest.fixture(scope="module")
def cluster():
    # One retry per task: a task whose worker dies twice fails (the default retries three times).
    # Saturation 1.0: a worker holds only the task it runs, so a kill counts against that one alone
    # (a task queued on the dying worker counts as one that was running there).
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}):
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("dask_inputs"))


@pytest.fixture(scope="module")
def threaded(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("threaded") / "atlas"
    convert_to_atlas(inputs, out, workers=2, **OPTIONS)
    return out


def assert_same_atlas(a: Path, b: Path) -> None:
    x, y = open_atlas(a), open_atlas(b)
    assert x.names == y.names and list(x.genes) == list(y.genes) and x.n_rows == y.n_rows
    for i in range(len(x.members)):
        assert_same_archive(x.member_path(i), y.member_path(i))
        assert (x.column_map(i) == y.column_map(i)).all()


def killing(cluster, member: str, kills: int, tmp_path: Path):
    counter = tmp_path / "kills"
    counter.write_text(str(kills))
    client = Client(cluster)
    client.register_plugin(KillMidMember(member, str(counter)))
    return client, counter


def test_dask_members_equal_the_threaded_ones(cluster, inputs, threaded, tmp_path):
    report = convert_to_atlas(inputs, tmp_path / "atlas", scheduler=cluster, **OPTIONS)  # a cluster object, or its address
    assert report.scheduler == cluster.scheduler_address
    worker_pids = {w.process.pid for w in cluster.workers.values()}  # the nannies' worker processes
    assert {r.pid for r in report.converted} <= worker_pids and os.getpid() not in worker_pids
    assert_same_atlas(tmp_path / "atlas", threaded)


def test_a_killed_task_is_retried_and_leaves_no_partial_member(cluster, inputs, threaded, tmp_path):
    client, counter = killing(cluster, "s3_csr-1", 1, tmp_path)
    try:
        convert_to_atlas(inputs, tmp_path / "atlas", scheduler=cluster.scheduler_address, **OPTIONS)
    finally:
        client.unregister_worker_plugin(KillMidMember.name)
        client.close()
    assert counter.read_text() == "0"  # the worker was killed once, mid-member
    assert not no_partials(tmp_path / "atlas")
    assert_same_atlas(tmp_path / "atlas", threaded)


def test_a_task_killed_for_good_leaves_no_manifest_and_resume_finishes(cluster, inputs, threaded, tmp_path):
    out = tmp_path / "atlas"
    client, counter = killing(cluster, "s2_dense-1", 2, tmp_path)
    try:
        with pytest.raises(ConversionError, match=r"1 of 9 member conversions failed \(.*s2_dense.h5ad\)") as e:
            convert_to_atlas(inputs, out, scheduler=cluster.scheduler_address, **OPTIONS)
    finally:
        client.unregister_worker_plugin(KillMidMember.name)
        client.close()
    assert "KilledWorker" in str(e.value) or "died" in str(e.value)
    assert counter.read_text() == "0"
    assert not is_atlas(out) and not no_partials(out)
    finished = sorted(p.name for p in (out / "members").iterdir())
    assert "s2_dense-1.scdl" not in finished and len(finished) == 8
    report = convert_to_atlas(inputs, out, scheduler=cluster.scheduler_address, resume=True, **OPTIONS)
    assert [r.name for r in report.converted] == ["s2_dense-1"] and len(report.kept) == 8
    assert_same_atlas(out, threaded)


def test_bad_scheduler(inputs, tmp_path):
    with pytest.raises(ValueError, match="scheduler must be 'local', an address"):
        convert_to_atlas(inputs, tmp_path / "atlas", scheduler="localhost:8786")
    assert not (tmp_path / "atlas").exists()


def test_cli_scheduler_local(inputs, threaded, tmp_path):
    rc = main(["convert", str(inputs), "-o", str(tmp_path / "atlas"), "--atlas", "--scheduler", "local", "--workers", "2",
               "--use-X-not-raw", "--member-rows", "20", "--max-memory", "1GB", "--report", str(tmp_path / "r.json"), "-q"])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["scheduler"] == "local"
    for r in json.loads((tmp_path / "r.json").read_text())["converted"]:
        assert r["pid"] != os.getpid()
    assert_same_atlas(tmp_path / "atlas", threaded)
