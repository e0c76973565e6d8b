"""Markdown reports (with a JSON twin) for fine-tune sessions and evaluations, written into the run folder.

write_finetune_report(run_dir, summary): numbers come from run_dir/metrics.jsonl (see summary.summarize_finetune);
`summary` adds what only the launcher knows and overrides computed values. Keys it understands:
  command, task, robot, agent, started_at, duration_s, stopped_by, target_period_s, checkpoints (path or list),
  config (dict of highlights), success_before / success_after (summary.rate(...) dicts from dedicated
  evaluations), robots (one dict per robot of a multi-robot session: robot, actor, env_steps, episodes,
  successful, eval_before, eval_after, outcome), notes (list of strings).
write_eval_report(run_dir, result, compare): `result`/`compare` are eval results (format in summary.py).
Both also draw their PNG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from expo_robot.observe import plots
from expo_robot.observe.metrics import METRICS_FILE, TB_DIR, read_metrics
from expo_robot.observe.stats import compare_rates
from expo_robot.observe.summary import summarize_eval, summarize_finetune

FINETUNE_REPORT = "report.md"
FINETUNE_PLOT = "finetune.png"
EVAL_REPORT = "eval_report.md"
EVAL_PLOT = "eval.png"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: Any, fmt: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt) if isinstance(x, float) else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _rate_row(name: str, r: Mapping | None) -> list[str]:
    if not r or not r.get("n"):
        return [name, "n/a", "n/a", "n/a"]
    lo, hi = r["ci95"]
    return [name, f"{r['successes']}/{r['n']}", _pct(r["rate"]), f"{_pct(lo)} – {_pct(hi)}"]


def _comparison_lines(cmp: Mapping, first: str, second: str) -> list[str]:
    lo, hi = cmp["difference_ci"]
    verdict = "**significant**" if cmp["significant"] else "not significant"
    return [
        f"Difference {second} − {first}: **{100 * cmp['difference']:+.1f} points** "
        f"(95% Newcombe interval {100 * lo:+.1f} to {100 * hi:+.1f}); {cmp['test']} p = {cmp['p_value']:.3g}: "
        f"{verdict} at the 5% level.",
        "",
    ]


def _loop_rows(loop: Mapping | None) -> list[list[str]]:
    if not loop:
        return [["control loop", "not recorded"]]
    return [
        ["control rate", f"{loop['rate_hz']:.2f} Hz (target period {loop['target_period_ms']:.1f} ms)"],
        ["period mean / jitter (std)", f"{loop['period_mean_ms']:.2f} ms / {loop['jitter_std_ms']:.2f} ms"],
        ["period p99 / max", f"{loop['period_p99_ms']:.2f} ms / {loop['period_max_ms']:.2f} ms"],
        ["overruns (>10% late)", f"{loop['overruns']} of {loop['periods']} ({loop['overrun_pct']:.2f}%)"],
    ]


def _driver_rows(loop: Mapping | None) -> list[list[str]]:
    """The driver's tick overruns by cause (drivers/clock.py LoopStats): the robot's step, a late wake-up, the rest
    (the loop's own work, counted as the stack's). Runs recorded before late wake-ups were told apart: two causes."""
    if not loop or not loop.get("ticks") or "robot_overruns" not in loop:
        return []
    step = ["robot step mean / max", f"{loop['robot_step_ms']:.2f} ms / {loop['max_robot_step_ms']:.2f} ms"]
    if loop.get("realtime") == 0:
        return [step]  # lock-step: the loop waits for each command by design; no tick grid to miss
    ticks, late, robot = int(loop["ticks"]), int(loop["overruns"]), int(loop["robot_overruns"])
    head = f"{late} of {ticks} ({100 * late / ticks:.2f}%): {robot} after a robot step longer than a period"
    if "wakeup_overruns" in loop:
        wakeup = int(loop["wakeup_overruns"])
        policy = f"SCHED_FIFO {loop['fifo_priority']}" if loop.get("fifo_priority") else "the normal policy"
        rest = late - robot - wakeup
        text = (f"{head}, {wakeup} woken more than a period late (driver under {policy}), "
                f"{rest} ({100 * rest / ticks:.2f}%) the loop's own work")  # fmt: skip
    else:
        text = f"{head}, {late - robot} ({100 * (late - robot) / ticks:.2f}%) the stack's"
    return [["driver ticks > a period late", text], step]


def _render_rows(loop: Mapping | None) -> list[list[str]]:
    """Simulated cameras: the driver's time per rendered frame (robot.render profile), none without them."""
    if not loop or not loop.get("render_frames"):
        return []
    text = f"{loop['render_ms']:.1f} ms mean, {loop['max_render_ms']:.1f} ms max ({int(loop['render_frames'])} frames)"
    return [["simulated camera render per frame", text]]


def _latency_rows(lat: Mapping | None) -> list[list[str]]:
    if not lat or not lat.get("n"):
        return [["policy step latency", "not recorded"]]
    return [
        [
            "policy step latency",
            f"p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
            f"max {lat['max_ms']:.2f} ms (mean {lat['mean_ms']:.2f} ms, n={lat['n']})",
        ]
    ]


def _jsonable(x: Any) -> Any:
    """NaN/inf become null so the JSON is standard; tuples become lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _write(run_dir: Path, name: str, lines: list[str], doc: Mapping) -> Path:
    path = run_dir / name
    path.write_text("\n".join(lines).rstrip() + "\n")
    path.with_suffix(".json").write_text(json.dumps(_jsonable(doc), indent=2, allow_nan=False))
    return path


def _finetune_numbers(run_dir: Path, summary: Mapping) -> tuple[dict, list[dict]]:
    records = read_metrics(run_dir) if (run_dir / METRICS_FILE).exists() else []
    computed = summarize_finetune(records, target_period_s=summary.get("target_period_s"))
    return {**computed, **summary}, records


def _success_section(s: dict) -> list[str]:
    before, after = s.get("success_before"), s.get("success_after")
    lines = ["## Success", ""]
    lines += _table(["", "successes", "rate", "95% Wilson interval"],
                    [_rate_row("before (BC start)", before), _rate_row("after", after)])  # fmt: skip
    lines += [f"Basis: {s.get('success_basis', 'as given by the launcher')}.", ""]
    if before and after and before.get("n") and after.get("n"):
        s["comparison"] = compare_rates(before["successes"], before["n"], after["successes"], after["n"])
        lines += _comparison_lines(s["comparison"], "before", "after")
    return lines


def _session_section(s: Mapping) -> list[str]:
    rows = [
        ["env steps", s.get("env_steps", "n/a")],
        [
            "episodes",
            f"{s.get('episodes', 'n/a')} ({_pct(s.get('training_successes', {}).get('rate'))} successful)",
        ],
        ["learner updates", f"{s.get('learner_updates', 'n/a')} ({_num(s.get('updates_per_s'), '.1f')} /s)"],
        ["replay buffer", f"{s.get('buffer_size', 'n/a')} transitions"],
        ["operator interventions", f"{_pct(s.get('intervention_rate'))} of steps"],
    ]
    timing = (
        _loop_rows(s.get("loop"))
        + _driver_rows(s.get("driver_loop"))
        + _render_rows(s.get("driver_loop"))
        + _latency_rows(s.get("policy_latency"))
    )
    events = s.get("safety_events") or {}
    safety = _table(["reason", "count"], sorted(events.items())) if events else ["None recorded.", ""]
    return ["## Session", "", *_table(["", ""], rows), "## Timing", "", *_table(["", ""], timing),
            "## Safety events", "", *safety]  # fmt: skip


def _robots_section(s: Mapping) -> list[str]:
    robots = s.get("robots") or []
    if not robots:
        return []
    header = ["robot", "actor", "env steps", "episodes (successful)", "eval before", "eval after", "outcome"]
    rows = [[r["robot"], f"`{r['actor']}`", r["env_steps"], f"{r['episodes']} ({r['successful']})",
             r["eval_before"], r["eval_after"], r["outcome"]] for r in robots]  # fmt: skip
    return ["## Robots", "", *_table(header, rows)]


def _files_section(s: Mapping, run_dir: Path, plot: Path | None) -> list[str]:
    ckpts = s.get("checkpoints")
    ckpts = [ckpts] if isinstance(ckpts, str | Path) else list(ckpts or [])
    return [
        "## Files",
        "",
        f"- plot: `{plot.name}`" if plot else "- plot: no metrics were logged, so no plot",
        f"- metrics: `{METRICS_FILE}` (JSON lines), TensorBoard: `tensorboard --logdir {run_dir / TB_DIR}`",
        f"- checkpoints: {', '.join(f'`{c}`' for c in ckpts)}" if ckpts else "- checkpoints: none written",
        "- resolved config: `config.yaml`",
        "",
    ]


def write_finetune_report(run_dir: str | Path, summary: Mapping) -> Path:
    """run_dir/report.md (+ report.json, finetune.png): what ran, how long, success before/after, timing, safety."""
    run_dir = Path(run_dir)
    s, records = _finetune_numbers(run_dir, summary)
    before, period = s.get("success_before"), s.get("target_period_s")
    plot = None
    if records:
        plot = plots.plot_finetune(
            records,
            run_dir / FINETUNE_PLOT,
            bc_success_rate=before["rate"] if before and before.get("n") else None,
            target_period_ms=period * 1e3 if period else None,
            title=" ".join(
                ["Fine-tune session:", str(s.get("task", "")), f"({s['agent']})" if "agent" in s else ""]
            ),
        )
    lines = [f"# Fine-tune report: {s.get('task', 'task?')} with {s.get('agent', 'agent?')}", ""]
    lines += [f"- command: `{s['command']}`" if s.get("command") else "- command: not recorded"]
    lines += [f"- robot: {s.get('robot', 'n/a')}; started {s.get('started_at', 'n/a')}; "
              f"duration {_num(s.get('duration_s'), '.0f')} s; stopped by: {s.get('stopped_by', 'n/a')}", ""]  # fmt: skip
    lines += _success_section(s) + _robots_section(s) + _session_section(s)
    if s.get("config"):
        lines += ["## Configuration highlights", "", *_table(["key", "value"], sorted(s["config"].items()))]
    lines += _files_section(s, run_dir, plot)
    if s.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in s["notes"])]
    return _write(run_dir, FINETUNE_REPORT, lines, s)


def _eval_column(s: Mapping) -> list[str]:
    lo, hi = s["success"]["ci95"]
    length = s["episode_length"]
    loop, lat = s["loop"] or {}, s["policy_latency"] or {}
    return [
        f"{s['success']['successes']}/{s['success']['n']}",
        _pct(s["success"]["rate"]),
        f"{_pct(lo)} – {_pct(hi)}",
        str(s["safety_stops"]),
        f"{s['interventions']['total_steps']} steps in {s['interventions']['episodes_with']} episodes",
        f"{_num(length['mean'], '.1f')} (median {_num(length['median'], '.0f')}, "
        f"{_num(length['min'], '.0f')}–{_num(length['max'], '.0f')})",
        f"{_num(loop.get('rate_hz'))} Hz, jitter {_num(loop.get('jitter_std_ms'))} ms, "
        f"overruns {_num(loop.get('overrun_pct'))}%",
        f"{_num(lat.get('p50_ms'))} / {_num(lat.get('p90_ms'))} / {_num(lat.get('p99_ms'))} ms",
        f"`{s.get('checkpoint')}`",
        str(s.get("policy")),
    ]


EVAL_ROWS = ["successes", "success rate", "95% Wilson interval", "safety stops (incl. e-stop)", "interventions",
             "episode length (steps)", "control loop", "policy step latency p50 / p90 / p99", "checkpoint",
             "policy"]  # fmt: skip


def write_eval_report(run_dir: str | Path, result: Mapping, compare: Mapping | None = None) -> Path:
    """run_dir/eval_report.md + eval_report.json + eval.png. `compare`: another policy's result, shown beside it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summarize_eval(result)] + ([summarize_eval(compare)] if compare is not None else [])
    labels = [s["label"] for s in summaries]
    if len(set(labels)) < len(labels):
        raise ValueError(f"both policies are labelled '{labels[0]}'; give the eval results distinct 'label's")
    plot = plots.plot_eval([result] + ([compare] if compare is not None else []), run_dir / EVAL_PLOT,
                           title="Evaluation: " + " vs ".join(labels))  # fmt: skip
    lines = [f"# Evaluation: {' vs '.join(labels)}", ""]
    columns = [_eval_column(s) for s in summaries]
    lines += _table(["", *labels], [[row, *(c[i] for c in columns)] for i, row in enumerate(EVAL_ROWS)])
    doc: dict[str, Any] = {"result": summaries[0], "compare": summaries[1] if compare is not None else None}
    if compare is not None:
        a, b = summaries[1]["success"], summaries[0]["success"]
        doc["comparison"] = compare_rates(a["successes"], a["n"], b["successes"], b["n"])
        lines += ["## Comparison", "", *_comparison_lines(doc["comparison"], labels[1], labels[0])]
    reasons = sorted({r for s in summaries for r in s["stops"]}, key=lambda r: (r != "success", r))
    lines += ["## Why episodes ended", ""]
    lines += _table(
        ["stop reason", *labels], [[r, *(s["stops"].get(r, 0) for s in summaries)] for r in reasons]
    )
    lines += ["A safety stop or e-stop ends the episode and counts as a failure.", ""]
    for s in summaries:
        loop_rows = _loop_rows(s["loop"]) + _latency_rows(s["policy_latency"])
        lines += [f"## Timing: {s['label']}", "", *_table(["", ""], loop_rows)]
        if s["config"]:
            lines += [
                f"## Configuration: {s['label']}",
                "",
                *_table(["key", "value"], sorted(s["config"].items())),
            ]
    lines += [
        "## Files",
        "",
        f"- plot: `{plot.name}`",
        f"- numbers: `{Path(EVAL_REPORT).with_suffix('.json')}`",
    ]
    doc["episodes"] = {s["label"]: list(r.get("episodes", [])) for s, r in zip(summaries, [result, compare])}
    return _write(run_dir, EVAL_REPORT, lines, doc)
