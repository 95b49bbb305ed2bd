"""``scdl-gpu profile``: where one configuration's time goes, stage by stage."""

from __future__ import annotations

from pathlib import Path

from ._bench import Ticker, archive_shape, open_loader
from ._measure import loader_stream, measure
from ._stages import STAGES, StageClock
from ._system import system_info

SCHEMA = "scdl-gpu-profile/1"


def run_profile(
    archive,
    *,
    device: str = "auto",
    shuffle: str = "block",
    batch_size: int = 4096,
    prefetch: int | None = None,
    seconds: float = 5.0,
    warmup: int = 3,
    progress: bool = False,
    **loader_kwargs,
) -> dict:
    """Time each stage of the pipeline (see :data:`~scdl_gpu.profiling.STAGES`) for one configuration.

    Producer stages are timed where they run (the prefetch thread when ``prefetch`` > 0), in wall
    time and, on the GPU, device time from CUDA events; each stage is wrapped in an NVTX range.
    ``consumer_wait`` is the time the training loop spent blocked on the next batch. On the GPU the
    clock synchronises around every stage, so the pipeline runs serialised: use ``scdl-gpu bench``
    for throughput. Returns a JSON-ready dict (``schema`` ``scdl-gpu-profile/1``).
    """
    from ..backend import resolve_device

    archive = Path(archive)
    dev = resolve_device(device)
    shape = archive_shape(archive)
    clock = StageClock.for_device(dev)
    loader = open_loader(archive, dev, shuffle, int(batch_size), prefetch, **loader_kwargs)
    prefetch = loader.prefetch  # the loader's default when None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=seconds, unit="s", desc="profile", bar_format="{l_bar}{bar}| {n:.1f}/{total:g} s{postfix}")
    tick = Ticker(bar, f"{shuffle}@{batch_size} prefetch {prefetch}", seconds, advance=True) if bar is not None else None
    try:  # set-up and warm-up batches are not profiled: the clock starts with the window
        t = measure(lambda: loader_stream(loader), dev, seconds, warmup, on_batch=tick,
                    on_window=lambda: setattr(loader, "stages", clock))
    finally:
        loader.close()
        if bar is not None:
            bar.update(max(bar.total - bar.n, 0))  # the window is over (or failed): show it complete
            bar.close()
    n = t.batches
    names = [s for s in STAGES if s in clock.calls] + [s for s in clock.calls if s not in STAGES]
    stages = [dict(stage=s, calls=clock.calls[s], wall_s=clock.wall_s[s], ms_per_batch=1e3 * clock.wall_s[s] / n,
                   device_ms_per_batch=1e3 * clock.device_s[s] / n if dev == "cuda" else None) for s in names]
    return dict(
        schema=SCHEMA, kind="profile", system=system_info(dev), archive=shape,
        settings=dict(shuffle=shuffle, batch_size=int(batch_size), prefetch=int(prefetch), device=dev, seconds=seconds,
                      warmup=warmup, loader_kwargs={k: repr(v) for k, v in loader_kwargs.items()}),
        batches=n, cells=t.cells, wall_s=t.seconds, cells_per_s=t.cells_per_s, ms_per_batch=1e3 * t.seconds / n,
        consumer_wait_ms_per_batch=1e3 * t.wait_s / n, first_batch_s=t.first_batch_s,
        host_rss_peak_bytes=t.host_rss_peak_bytes, host_anon_peak_bytes=t.host_anon_peak_bytes,
        device_mem_peak_bytes=t.device_mem_peak_bytes, stages=stages,
        stages_ms_per_batch=sum(s["ms_per_batch"] for s in stages),
    )

