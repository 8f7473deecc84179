"""Readable terminal tables (rich) for result documents. Rendering only: no arithmetic here."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from dspark_sim.config.measurements import CalibrationReport
from dspark_sim.config.results import PredictResult
from dspark_sim.config.schema import HardwareProfile, ModelSpec
from dspark_sim.core.models import ModelStats


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def print_predict(result: PredictResult, console: Console) -> None:
    console.print(
        f"[bold]{result.scenario}[/bold]: {result.model} on {result.hardware} x{result.tensor_parallel} (TP), "
        f"drafter {result.drafter}, acceptance {result.acceptance}"
    )
    surv = ", ".join(f"{a:.2f}" for a in result.survival[:8])
    console.print(
        f"weights {result.weights_gb_per_gpu:.1f} GB/GPU, KV {result.kv_gb_per_1k_tokens * 1e3:.1f} MB per 1k tokens "
        f"per sequence; survival a_k: {surv}"
    )
    table = Table(show_header=True, header_style="bold", title="baseline vs speculative (best gamma)")
    for col in ("batch", "ctx", "base ms", "bound", "base tok/s/user", "gamma", "tau", "draft ms",
                "verify ms", "bound", "tok/s/user", "tok/s/GPU", "speed-up", "fits"):
        table.add_column(col, justify="right")
    for p in result.points:
        b = p.best
        table.add_row(
            str(p.batch_size),
            str(p.context_tokens),
            _ms(p.baseline_step_ms),
            p.baseline.bound[:3],
            f"{p.baseline_tokens_per_s_per_user:.1f}",
            str(b.gamma),
            f"{b.tau:.2f}",
            _ms(b.draft.time_ms),
            _ms(b.verify.time_ms),
            b.verify.bound[:3],
            f"{b.tokens_per_s_per_user:.1f}",
            f"{b.throughput_tokens_per_s_per_gpu:.0f}",
            f"{b.speedup:.2f}x",
            "yes" if p.fits_in_memory else "[red]no[/red]",
        )
    console.print(table)
    # speed-up by gamma for every point: the curve behind "best gamma"
    gt = Table(show_header=True, header_style="bold", title="speed-up by gamma")
    gt.add_column("batch", justify="right")
    gt.add_column("context", justify="right")
    for s in result.points[0].by_gamma if result.points else []:
        gt.add_column(f"g={s.gamma}", justify="right")
    for p in result.points:
        cells = []
        for s in p.by_gamma:
            text = f"{s.speedup:.2f}"
            cells.append(f"[bold]{text}[/bold]" if s.gamma == p.best_gamma else text)
        gt.add_row(str(p.batch_size), str(p.context_tokens), *cells)
    console.print(gt)


def print_profile(profile: HardwareProfile, console: Console) -> None:
    table = Table(show_header=False, title=f"{profile.name}: {profile.description}")
    table.add_column("field")
    table.add_column("value", justify="right")
    rows = [
        ("memory", f"{profile.memory_capacity_gb:g} GB at {profile.memory_bandwidth_gbps:g} GB/s"),
        ("on-chip", f"{profile.onchip_capacity_mb:g} MB at {profile.onchip_bandwidth_gbps:g} GB/s"),
        ("peak dense TFLOP/s", ", ".join(f"{k} {v:g}" for k, v in profile.peak_tflops.items())),
        ("interconnect", f"{profile.interconnect_bandwidth_gbps:g} GB/s/dir, {profile.interconnect_latency_us:g} us"),
        ("efficiency", ", ".join(f"{k} {v:g}" for k, v in profile.efficiency.model_dump().items())),
        ("overheads", ", ".join(f"{k} {'-' if v is None else format(v, 'g')}"  # None: as per_step_us
                                for k, v in profile.overheads.model_dump().items())),
        ("price", f"${profile.price_per_hour_usd:g}/h" if profile.price_per_hour_usd is not None else "-"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def print_model(spec: ModelSpec, s: ModelStats, console: Console) -> None:
    """A model preset and what its architecture implies (`core.models.model_stats`)."""
    table = Table(show_header=False, title=f"{spec.name} ({spec.source})")
    table.add_column("field")
    table.add_column("value", justify="right")
    rows = [
        ("parameters", f"{s.total_params / 1e9:.2f} B total, {s.active_params / 1e9:.2f} B active"),
        ("weights", f"{s.weight_bytes_total / 1e9:.2f} GB ({spec.weight_dtype})"),
        ("KV per token", f"{s.kv_bytes_per_token / 1e3:.1f} kB ({spec.kv_dtype}, {spec.attention})"),
        ("FLOPs per token", f"{s.matmul_flops_per_token / 1e9:.2f} GFLOP (matmuls)"),
        ("layers / hidden", f"{spec.num_layers} / {spec.hidden_size}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def print_calibration(report: CalibrationReport, console: Console) -> None:
    table = Table(title=f"calibration on {report.profile_device}", show_header=True, header_style="bold")
    for col in ("parameter", "value", "unit", "identified", "note"):
        table.add_column(col)
    for fit in report.parameters:
        table.add_row(fit.name, f"{fit.value:.4g}", fit.unit, "yes" if fit.identified else "[red]no[/red]", fit.note)
    console.print(table)
    console.print(
        f"fit over {len(report.points)} pass shapes: median |error| {report.median_abs_error_pct:.2f}%, "
        f"worst {report.max_abs_error_pct:.2f}%"
    )
    worst = sorted(report.points, key=lambda p: -abs(p["error_pct"]))[:5]
    for p in worst:
        console.print(
            f"  worst: {p['role']} batch {p['batch_size']} q {p['query_tokens']} ctx {p['context_tokens']}: "
            f"measured {p['measured_s'] * 1e3:.3f} ms, predicted {p['predicted_s'] * 1e3:.3f} ms ({p['error_pct']:+.1f}%)"
        )
