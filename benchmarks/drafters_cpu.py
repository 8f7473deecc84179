"""The engine's drafters on this CPU (or a GPU, --device cuda): tau, per-position acceptance, confidence calibration, speed, and
DSpark against an MTP-1 baseline at matched throughput.

Drafters (trained against the `tiny` target if the cache lacks them, `engine.train_drafters`): the
autoregressive draft model, the MTP-style chained head, the parallel block drafter and DSpark. For every
temperature x batch: plain decoding, each drafter with a fixed gamma and with DSpark's hardware-aware
prefix scheduler fed by the drafter's confidences (DSpark: its calibrated head; others: q of the drafted
token) over an SPS(B) table measured here (draft + verify step time), and MTP-1 (the MTP head, gamma 1).

Timing: the 2 cores may be shared, so every configuration runs `repeats` times, interleaved (all
configurations once, then again), and the fastest decode time counts. Batches smaller than
`min_sequences` run several batches of distinct prompts (batch 1: 8 prompts), pooled, so that no
point rests on one prompt. Prints one JSON document.

    python benchmarks/drafters_cpu.py [--preset tiny] [--batches 1,4,16,64] [--new-tokens 128]
                                      [--repeats 3] [--out validation/drafters/cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dspark_sim.config.io import write_atomic
from dspark_sim.config.schema import DSparkScheduler, FixedGamma
from dspark_sim.core.policies import make_policy
from dspark_sim.engine.data import held_out_prompts, load_corpus
from dspark_sim.engine.drafter_generate import drafter_generate
from dspark_sim.engine.drafters import MODE_GREEDY, MODE_SAMPLED
from dspark_sim.engine.generate import generate_baseline
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.sps import measure_step_sps
from dspark_sim.engine.train import get_preset, train_pair
from dspark_sim.engine.train_drafters import ece, train_drafters
from dspark_sim.validate.drafters import cache_tokens, matched, profile_drafter_loops

ALL = ("draft_model", "mtp", "parallel", "dspark")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def live_calibration(results: list[GenerationResult], gamma: int, bins: int = 10) -> dict[str, Any]:
    """ECE of the confidences the engine fed its policy against what then happened: for every verified
    draft position k whose earlier drafts were all accepted, outcome = (draft k accepted)."""
    conf: list[list[float]] = [[] for _ in range(gamma)]
    out: list[list[float]] = [[] for _ in range(gamma)]
    for res in results:
        for s in res.steps:
            if s.confidences is None:
                continue
            for i in np.nonzero(s.active)[0]:
                for k in range(int(s.verified[i])):
                    if s.accepted[i] >= k:  # drafts < k accepted: position k was reached
                        conf[k].append(float(s.confidences[i, k]))
                        out[k].append(float(s.accepted[i] > k))
    return {
        "ece_by_position": [round(ece(np.array(c), np.array(o), bins), 4) if c else None for c, o in zip(conf, out)],
        "ece_all": round(ece(np.concatenate([np.array(c) for c in conf]), np.concatenate([np.array(o) for o in out]),
                             bins), 4),
        "mean_conf_by_position": [round(float(np.mean(c)), 4) if c else None for c in conf],
        "accept_rate_by_position": [round(float(np.mean(o)), 4) if o else None for o in out],
        "samples_by_position": [len(c) for c in conf],
    }


def merge_results(results: list[GenerationResult]) -> GenerationResult:
    """Several runs of the same batch size as one: their steps, tokens and times side by side (tau,
    acceptance and tokens/s then pool all of them)."""
    if len(results) == 1:
        return results[0]
    return GenerationResult(
        tokens=[t for r in results for t in r.tokens], prompt_lens=[n for r in results for n in r.prompt_lens],
        prefill_time_s=sum(r.prefill_time_s for r in results), decode_time_s=sum(r.decode_time_s for r in results),
        target_passes=sum(r.target_passes for r in results), steps=[s for r in results for s in r.steps],
        step_wall_s=[w for r in results for w in r.step_wall_s])


def rate(res: GenerationResult) -> float:
    """Decode tokens per second of the whole batch: plain decoding's, or a speculative run's while every
    sequence was still generating (`GenerationResult.full_batch_tokens_per_s`: the static batch's tail,
    where the slowest sequences step alone, is left out as a serving engine refills it)."""
    return res.full_batch_tokens_per_s()


def run(preset: str = "tiny", seed: int = 0, cache_dir: str | None = None, new_tokens: int = 128,
        prompt_len: int = 64, batches: tuple[int, ...] = (1, 4, 16, 64),
        frontier_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64), temperatures: tuple[float, ...] = (0.0, 1.0),
        gamma: int = 5, repeats: int = 3, kinds: tuple[str, ...] = ALL, log: Any = _log,
        threads: int | None = None, min_sequences: int = 8, device: str = "cpu",
        partial: Any = None) -> dict[str, Any]:
    """The whole table; `partial(doc)`, when given, gets the rows measured so far after every batch size
    (so a run stopped by a time limit keeps them)."""
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    pair = train_pair(preset, seed, cache_dir, log=lambda m: log(f"pair: {m}"))
    trained = train_drafters(preset, seed, cache_dir, [k for k in kinds if k != "draft_model"],
                             log=lambda m: log(f"drafters: {m}"))
    # fp32 on every device: the tiny models are host-bound on a GPU, and the trained weights are fp32
    target = pair.target.to(device).eval()
    drafters: dict[str, Any] = {"draft_model": pair.draft.to(device).eval(),
                                **{k: v.drafter.to(device).eval() for k, v in trained.items()}}
    drafters = {k: drafters[k] for k in kinds}
    if device.startswith("cuda"):  # the inference layout `profile` times on a GPU (fewer kernel launches)
        target.fuse_projections()
        if "draft_model" in drafters:
            drafters["draft_model"].fuse_projections()
    prompts_all = held_out_prompts(load_corpus(get_preset(preset).max_corpus_bytes),
                                   max(*batches, *frontier_batches, min_sequences),
                                   prompt_len)
    all_batches = sorted(set(batches) | set(frontier_batches))

    # SPS(B) tables (draft + verify step time) per drafter and batch, for the prefix scheduler
    log("measuring SPS(B) tables ...")
    sps: dict[tuple[str, int], dict[int, float]] = {}
    for b in all_batches:
        for kind, d in drafters.items():
            if b in batches or kind in ("mtp", "dspark"):
                sps[(kind, b)] = measure_step_sps(target, d, b, gamma, context=prompt_len + new_tokens // 2)

    def configs(b: int) -> list[tuple[str, str | None, Any]]:
        out: list[tuple[str, str | None, Any]] = [("baseline", None, None)]
        if "mtp" in drafters:
            out.append(("mtp/fixed-1", "mtp", lambda: FixedGamma(gamma=1)))
        for kind in drafters:
            if b in batches:
                out.append((f"{kind}/fixed-{gamma}", kind, lambda: FixedGamma(gamma=gamma)))
            if b in batches or kind == "dspark":
                out.append((f"{kind}/dspark-{gamma}", kind,
                            lambda k=kind: make_policy(DSparkScheduler(gamma_max=gamma, sps_source="table",
                                                                       sps_table=sps[(k, b)]))))
        return out

    # each drafter loop's step time on random-token prompts, before and after the table (the simulator's
    # `validate --drafters` fits each loop's per-step overhead from them: same session, same machine state)
    loop_gammas = {k: tuple(sorted({gamma, 1})) if k == "mtp" else (gamma,) for k in drafters}
    loop_batches = tuple(sorted({1, 4, 16} & set(all_batches))) or (min(all_batches),)
    loop_cache = cache_tokens(prompt_len, new_tokens, gamma)

    def loop_profile() -> dict[tuple[str, float, int, int], float]:
        return profile_drafter_loops(target, drafters, loop_gammas, temperatures, loop_batches, prompt_len,
                                     loop_cache, seed=seed)

    log("profiling the drafter loops (random-token prompts) ...")
    loops_before = loop_profile()
    rows: list[dict[str, Any]] = []
    live: dict[str, Any] = {}
    for temp in temperatures:
        sampling = Sampling(temperature=temp)
        for b in all_batches:
            # small batches run several batches of distinct prompts, so that no point rests on one prompt
            rounds = max(1, min_sequences // b)
            batches_of_prompts = [prompts_all[r * b: (r + 1) * b] for r in range(rounds)]
            best: dict[str, GenerationResult] = {}
            cfgs = configs(b)

            def once(name: str, kind: str | None, policy: Any, n: int = new_tokens,
                     _batches: list = batches_of_prompts, _s: Sampling = sampling) -> GenerationResult:
                out = []
                for r, p in enumerate(_batches):
                    gen = torch.Generator(device=device).manual_seed(seed + 17 + r)
                    if kind is None:
                        out.append(generate_baseline(target, p, n, _s, generator=gen))
                    else:
                        out.append(drafter_generate(target, drafters[kind], p, n, policy(), _s, generator=gen))
                return merge_results(out)

            for name, kind, policy in cfgs:  # warm-up
                once(name, kind, policy, 8)
            for _ in range(repeats):
                for name, kind, policy in cfgs:
                    res = once(name, kind, policy)
                    if name not in best or rate(res) > rate(best[name]):
                        best[name] = res
            base = best["baseline"]
            for name, _kind, _ in cfgs:
                res = best[name]
                per_user = rate(res) / b
                steps = [s for s in res.steps if s.active.any()]
                full = [w for s, w in zip(res.steps, getattr(res, "step_wall_s", []), strict=False) if s.active.all()]
                row = {
                    "temperature": temp, "batch": b, "config": name,
                    "tau": round(res.tau, 3),
                    "acceptance_by_position": [round(a, 3) for a in res.acceptance_by_position()],
                    "per_user_tok_s": round(per_user, 1), "throughput_tok_s": round(per_user * b, 1),
                    "speedup": round(rate(res) / rate(base), 3),
                    "batch_completion_per_user_tok_s": round(rounds * (new_tokens - 1) / res.decode_time_s, 1),
                    "prompt_batches": rounds,
                    "step_ms": round(1e3 * float(np.mean(full)), 3) if full else None,
                    "verified_per_seq_step": round(float(np.mean([s.verified[s.active].mean() for s in steps])), 3)
                    if steps else 0.0,
                    "draft_ms_per_step": round(1e3 * float(np.mean([s.draft_time_s for s in steps])), 3) if steps else 0,
                    "verify_ms_per_step": round(1e3 * float(np.mean([s.verify_time_s for s in steps])), 3) if steps else 0,
                    "greedy_identical": (res.tokens == base.tokens) if temp == 0.0 else None,
                }
                rows.append(row)
                log(f"T={temp:g} B={b:3d} {name:22s} tau {row['tau']:.2f} {row['per_user_tok_s']:8.1f} tok/s/user "
                    f"{row['throughput_tok_s']:9.1f} tok/s x{row['speedup']:.2f}")
            if partial is not None:
                partial({"partial": True, "preset": preset, "seed": seed, "new_tokens": new_tokens,
                         "prompt_len": prompt_len, "gamma": gamma, "repeats": repeats, "device": device,
                         "rows": rows, "wall_s": round(time.perf_counter() - t_start, 1)})
            if b == max(batches):  # live calibration of the confidences each drafter fed its policy
                for kind in drafters:
                    key = f"T={temp:g}"
                    live.setdefault(kind, {})[key] = live_calibration([best[f"{kind}/fixed-{gamma}"]], gamma)
                    if kind == "dspark":  # the same run with the raw (uncalibrated) head
                        d = drafters["dspark"]
                        saved = d.conf_temperature.clone()
                        d.conf_temperature.fill_(1.0)
                        raw = once("raw", "dspark", lambda: FixedGamma(gamma=gamma))
                        d.conf_temperature.copy_(saved)
                        live[kind][key + " uncalibrated"] = live_calibration([raw], gamma)

    loops_after = loop_profile()
    loop_step_s = {f"{k}|{t:g}|{g}|{b}": [round(loops_before[(k, t, g, b)], 7), round(loops_after[(k, t, g, b)], 7)]
                   for (k, t, g, b) in loops_before if (k, t, g, b) in loops_after}

    comparison = {}
    for temp in temperatures:
        def curve(name: str, t: float = temp) -> list[dict]:
            return [r for r in rows if r["config"] == name and r["temperature"] == t]
        if "mtp" in drafters and "dspark" in drafters:
            comparison[f"T={temp:g}"] = {
                "dspark_vs_mtp1_at_matched_throughput": matched(curve(f"dspark/dspark-{gamma}"), curve("mtp/fixed-1")),
                "dspark": [{k: r[k] for k in ("batch", "tau", "per_user_tok_s", "throughput_tok_s",
                                                "verified_per_seq_step")} for r in curve(f"dspark/dspark-{gamma}")],
                "mtp1": [{k: r[k] for k in ("batch", "tau", "per_user_tok_s", "throughput_tok_s")}
                         for r in curve("mtp/fixed-1")],
            }

    training = {}
    for kind, t in trained.items():
        m = t.metrics
        cal = m.get("calibration", {})
        training[kind] = {
            "params": m.get("params"), "train_time_s": round(m.get("train_time_s", 0), 1),
            "shared_target_time_s": round(m.get("shared_target_time_s", 0), 1),
            "calibration_time_s": round(m.get("calibration_time_s", 0), 1),
            "steps": m.get("train", {}).get("steps"),
            "alpha_t1_by_position_teacher_forced": [round(a, 3) for a in m.get("alpha_t1_by_position", [])],
            "greedy_match_by_position_teacher_forced": [round(a, 3) for a in m.get("greedy_match_by_position", [])],
            "calibration_teacher_forced": {mode: _round(rep) for mode, rep in cal.items()},
        }
    dm = pair.metrics
    training["draft_model"] = {"params": dm.get("draft_params"), "train_time_s": round(dm.get("draft_train_time_s", 0), 1),
                               "alpha_t1": dm.get("alpha_t1")}
    return {
        "preset": preset, "seed": seed, "threads": torch.get_num_threads(), "new_tokens": new_tokens,
        "prompt_len": prompt_len, "gamma": gamma, "repeats": repeats,
        "timing": "best of `repeats` interleaved runs; decode only (prefill excluded); speculative runs over the "
                  "steps in which every sequence was still generating (batch_completion_* include the static "
                  "batch's straggler tail); the machine's 2 cores may be shared with other jobs (noisy)",
        "drafters": {k: _describe(v) for k, v in drafters.items()},
        "training": training, "rows": rows, "live_calibration": live, "comparison": comparison,
        "sps_tables": {f"{k}@{b}": {str(x): round(y, 1) for x, y in t.items()} for (k, b), t in sps.items()},
        "loop_step_s": loop_step_s,
        "loop_step_s_note": "kind|temperature|gamma|batch: median full-batch step wall time of the drafter loop on "
                            "random-token prompts, measured before and after the table",
        "wall_s": round(time.perf_counter() - t_start, 1),
        "temperatures_modes": {"sampled": MODE_SAMPLED, "greedy": MODE_GREEDY},
    }


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def _describe(d: Any) -> dict[str, Any]:
    if hasattr(d, "args") and hasattr(d.args, "kind"):
        a = d.args
        return {"kind": a.kind, "layers": a.n_layers, "dim": a.dim, "heads": a.n_heads, "ffn": a.ffn_hidden,
                "block": a.block_size, "window": a.window, "markov_rank": a.markov_rank if a.kind == "dspark" else None,
                "params": d.num_params()}
    return {"kind": "draft_model", "layers": d.args.n_layers, "dim": d.args.dim, "params": d.args.num_params()}


def _f(values: list | None, digits: int = 2) -> str:
    return "-" if values is None else " / ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables as markdown (what validation/drafters/README.md shows)."""
    out = []
    tr = report["training"]
    out.append("| drafter | params | train s (own + shared target passes) | alpha T=1 by position (teacher-forced) "
               "| greedy match by position |")
    out.append("|---|---|---|---|---|")
    for kind, t in tr.items():
        if kind == "draft_model":
            out.append(f"| draft_model | {t['params']:,} | {t['train_time_s']} | {t['alpha_t1']:.2f} (all positions) | - |")
            continue
        out.append(f"| {kind} | {t['params']:,} | {t['train_time_s']} + {t['shared_target_time_s']} | "
                   f"{_f(t['alpha_t1_by_position_teacher_forced'])} | {_f(t['greedy_match_by_position_teacher_forced'])} |")
    out.append("")
    out.append("| drafter | mode | ECE, teacher-forced held-out half: before -> after per-position temperature | "
               "live ECE in the engine (fixed gamma, largest batch) | live ECE, head uncalibrated |")
    out.append("|---|---|---|---|---|")
    for kind, t in tr.items():
        if kind == "draft_model":
            continue
        for mode, key in (("sampled", "T=1"), ("greedy", "T=0")):
            cal = t["calibration_teacher_forced"].get(mode, {})
            if "ece_before_all" in cal:
                tf = f"head: {cal['ece_before_all']:.3f} -> {cal['ece_after_all']:.3f} (T_k {_f(cal['temperature'])})"
            else:
                tf = (f"q(token): {cal.get('token_conf_ece_before_all', float('nan')):.3f} -> "
                      f"{cal.get('token_conf_ece_after_all', float('nan')):.3f}")
            live = report["live_calibration"].get(kind, {})
            raw = live.get(f"{key} uncalibrated", {}).get("ece_all")
            out.append(f"| {kind} | {mode} | {tf} | {live.get(key, {}).get('ece_all', float('nan')):.3f} | "
                       f"{'-' if raw is None else f'{raw:.3f}'} |")
    for kind in ("draft_model",):
        live = report["live_calibration"].get(kind, {})
        for key in ("T=1", "T=0"):
            if key in live:
                out.append(f"| {kind} | {'sampled' if key == 'T=1' else 'greedy'} | - | {live[key]['ece_all']:.3f} | - |")
    out.append("")
    for temp in sorted({r["temperature"] for r in report["rows"]}):
        rows = [r for r in report["rows"] if r["temperature"] == temp]
        batches = sorted({r["batch"] for r in rows if r["config"].endswith("fixed-" + str(report["gamma"]))})
        out.append(f"T={temp:g}: tau / tok/s per user / throughput tok/s (speed-up vs plain decoding, same run)")
        out.append("")
        out.append("| config | acceptance by position (largest batch) | " + " | ".join(f"B={b}" for b in batches) + " |")
        out.append("|---|---|" + "---|" * len(batches))
        for name in dict.fromkeys(r["config"] for r in rows):
            cells = []
            acc = None
            for b in batches:
                r = next((x for x in rows if x["config"] == name and x["batch"] == b), None)
                if r is None:
                    cells.append("-")
                    continue
                acc = r["acceptance_by_position"]
                cells.append(f"{r['tau']:.2f} / {r['per_user_tok_s']:.0f} / {r['throughput_tok_s']:.0f} "
                             f"({r['speedup']:.2f}x)")
            out.append(f"| {name} | {_f(acc)} | " + " | ".join(cells) + " |")
        out.append("")
    for key, comp in report["comparison"].items():
        out.append(f"{key}: DSpark (prefix scheduler, gamma_max {report['gamma']}) against MTP-1 at matched throughput")
        out.append("")
        out.append("| batch | DSpark tok/s | DSpark tok/s/user | verified/seq/step | MTP-1 tok/s/user at that throughput "
                   "| gain |")
        out.append("|---|---|---|---|---|---|")
        ver = {r["batch"]: r["verified_per_seq_step"] for r in comp["dspark"]}
        for r in comp["dspark_vs_mtp1_at_matched_throughput"]:
            other = r["baseline_per_user_at_same_throughput"]
            gain = r["per_user_gain_pct"]
            out.append(f"| {r['batch']} | {r['throughput_tok_s']:.0f} | {r['per_user_tok_s']:.0f} | {ver[r['batch']]:.2f} | "
                       f"{'-' if other is None else f'{other:.0f}'} | {'-' if gain is None else f'{gain:+.0f}%'} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--frontier-batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--temperatures", default="0,1")
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(ALL))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the drafters trained on the CPU, carried in the cache)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--markdown", default=None, help="also write the tables (markdown) here")
    ap.add_argument("--from-json", default=None, help="only turn a saved report into --markdown tables")
    a = ap.parse_args(argv)

    def ints(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in s.split(",") if x)

    if a.from_json:
        report = json.loads(Path(a.from_json).read_text())
        text = markdown(report)
        if a.markdown:
            Path(a.markdown).write_text(text + "\n")
        print(text)
        return report
    report = run(a.preset, a.seed, a.cache_dir, a.new_tokens, a.prompt_len, ints(a.batches), ints(a.frontier_batches),
                 tuple(float(t) for t in a.temperatures.split(",")), a.gamma, a.repeats, tuple(a.kinds.split(",")),
                 threads=a.threads, device=a.device,
                 partial=(lambda doc: write_atomic(a.out, json.dumps(doc, indent=1) + "\n")) if a.out else None)
    report["command"] = "python benchmarks/drafters_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        write_atomic(a.out, text + "\n")
    if a.markdown:
        Path(a.markdown).write_text(markdown(report) + "\n")
    return report


if __name__ == "__main__":
    main()
