"""All-reduce microbenchmark: tensor parallelism's communication, at the engine's message sizes.

The collective timed is the engine's own (`engine.tp.group.all_reduce`, which the row-parallel layers
call) on [tokens, hidden] activations; `fit_interconnect` (fit/) turns the samples into the
cost model's interconnect figures. Run it on every rank of a group (`allreduce_job` is the worker
`python -m dspark_sim.cli.tp allreduce` starts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor

from dspark_sim.config.tensor_parallel import AllReduceProfile, AllReduceSample
from dspark_sim.engine.model import WEIGHT_DTYPES
from dspark_sim.engine.tp.group import TPGroup, all_reduce, any_rank
from dspark_sim.measure.profile_merge import timing_summary
from dspark_sim.measure.provenance import DTYPE_NAMES, device_info, engine_version
from dspark_sim.measure.timing import sync


def _allreduce_inner(message_bytes: int, device: torch.device) -> int:
    """All-reduces per timed repeat: enough that timer and rank skew amortise on small messages."""
    if device.type == "cuda":
        return 50 if message_bytes < (1 << 20) else 10
    return 20 if message_bytes < (1 << 16) else 5 if message_bytes < (1 << 20) else 2


def _reduces(x: Tensor, inner: int, tp: TPGroup) -> Tensor:
    """`inner` all-reduces of x, back to back."""
    y = x
    for _ in range(inner):
        y = all_reduce(x, tp.group_name, tp.mode)
    return y


def _matmuls(x: Tensor, weight: Tensor, inner: int, tp: TPGroup, reduce: bool = True) -> Tensor:
    """`inner` row-parallel matmuls x @ weight, each followed by the all-reduce of its output (`reduce`)."""
    y = x
    for _ in range(inner):
        y = x @ weight
        if reduce:
            y = all_reduce(y, tp.group_name, tp.mode)
    return y


@torch.no_grad()
def profile_allreduce(tp: TPGroup, tokens: list[int], hidden: int, dtype: torch.dtype, *, warmup: int = 3,
                      repeats: int = 10, use_graphs: bool = True,
                      matmul_in: int | None = None) -> list[AllReduceSample]:
    """Time the engine's all-reduce (`all_reduce`, the collective the row-parallel layers call) of
    [tokens, hidden] tensors in `dtype` on every rank of `tp` (call it on every rank).

    Each repeat runs a burst of all-reduces between a host barrier plus one device all-reduce (which
    lines the ranks up) and a device sync; the burst's mean is taken on the slowest rank (max over
    ranks), so every rank returns the same samples. On CUDA the burst is a captured CUDA graph when
    `use_graphs` (as the engine replays its passes), eager calls otherwise or if capture fails.

    matmul_in: time each all-reduce as the model runs it instead, right after the row-parallel matmul
    [tokens, matmul_in] @ [matmul_in, hidden] whose output it reduces (context "between-matmuls"), minus
    a burst of the matmuls alone. Back-to-back all-reduces hide part of each other's fixed cost; in the
    model every collective waits for the matmul before it and the next matmul waits for it.
    """
    dev = tp.device
    name = DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
    elem = torch.tensor([], dtype=dtype).element_size()
    out: list[AllReduceSample] = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    weight = (torch.randn(matmul_in, hidden, generator=gen) * matmul_in ** -0.5).to(dev, dtype) if matmul_in else None
    for t in tokens:
        inner = _allreduce_inner(t * hidden * elem, dev)
        if weight is None:
            x = torch.randn(t, hidden, generator=gen).to(dev, dtype)
            times, mode = _time_burst(partial(_reduces, x, inner, tp), tp, warmup, repeats, use_graphs)
        else:
            x = torch.randn(t, weight.shape[0], generator=gen).to(dev, dtype)
            both, mode = _time_burst(partial(_matmuls, x, weight, inner, tp), tp, warmup, repeats, use_graphs)
            alone, _ = _time_burst(partial(_matmuls, x, weight, inner, tp, reduce=False), tp, warmup, repeats,
                                   use_graphs)
            floor = statistics.median(alone)
            times = [max(v - floor, 1e-9 * floor) for v in both]
        times = [v / inner for v in times]
        med, spread = timing_summary(times)
        out.append(AllReduceSample(world_size=tp.world, tokens=t, hidden=hidden, dtype=name,
                                   message_bytes=t * hidden * elem, mode=mode,
                                   context="between-matmuls" if weight is not None else "burst",
                                   times_s=[round(v, 10) for v in times], median_s=med, spread=spread))
    return out


def _time_burst(burst: Callable[[], object], tp: TPGroup, warmup: int, repeats: int,
                use_graphs: bool) -> tuple[list[float], str]:
    """Seconds of each of `repeats` runs of `burst` on the slowest rank (the same list on every rank),
    the ranks lined up before each run; a captured CUDA graph of it on CUDA when `use_graphs`."""
    dev = tp.device
    line_up = torch.zeros(1, device=dev)
    for _ in range(warmup):
        burst()
    run, mode = burst, "eager"
    if dev.type == "cuda" and use_graphs:
        run, mode = _graph_or_eager(burst, tp)
    times = []
    for _ in range(repeats):
        dist.barrier(group=tp.cpu_group)
        all_reduce(line_up, tp.group_name, tp.mode)
        sync(dev)
        t0 = time.perf_counter()
        run()
        sync(dev)
        times.append(time.perf_counter() - t0)
    tt = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(tt, op=dist.ReduceOp.MAX, group=tp.cpu_group)
    return tt.tolist(), mode


def _graph_or_eager(burst: Callable[[], object], tp: TPGroup) -> tuple[Callable[[], object], str]:
    """A CUDA graph of `burst` (replayed), or `burst` itself when capture fails on any rank."""
    graph: torch.cuda.CUDAGraph | None = None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            burst()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            burst()
    except Exception:  # noqa: BLE001 - fall back to eager calls (recorded as the profile's mode)
        graph = None
    if any_rank(graph is None, tp) or graph is None:
        torch.cuda.synchronize()
        return burst, "eager"
    return graph.replay, "cuda-graph"


def allreduce_profile(tp: TPGroup, tokens: list[int], hidden: int, dtype: torch.dtype, *, repeats: int = 10,
                      created_by: str = "", matmul_in: int | None = None) -> AllReduceProfile:
    """`profile_allreduce` as a document (the same on every rank)."""
    samples = profile_allreduce(tp, tokens, hidden, dtype, repeats=repeats, matmul_in=matmul_in)
    mode = "+".join(sorted({s.mode for s in samples}))
    return AllReduceProfile(engine_version=engine_version(), backend=tp.backend, device=device_info(tp.device),
                            world_size=tp.world, mode=mode, samples=samples, created_by=created_by)


@dataclass(frozen=True)
class AllReduceJob:
    tokens: tuple[int, ...]
    hidden: int
    dtype: str
    repeats: int
    matmul_in: int | None = None  # time each all-reduce after a [tokens, matmul_in] x [matmul_in, hidden] matmul
    created_by: str = "python -m dspark_sim.cli.tp allreduce"


def allreduce_job(tp: TPGroup, job: AllReduceJob) -> AllReduceProfile | None:
    """Worker: the all-reduce profile of this group (rank 0 returns it)."""
    doc = allreduce_profile(tp, list(job.tokens), job.hidden, WEIGHT_DTYPES[job.dtype], repeats=job.repeats,
                            created_by=job.created_by, matmul_in=job.matmul_in)
    return doc if tp.leader else None
