"""Figures a person would rather look at than read: one PNG per fine-tune session, one per evaluation.

Both work from files on disk (metrics.jsonl, eval results), so they can be redrawn after the run. Matplotlib's Agg
backend is selected here, so no display is ever needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

from expo_robot.observe import metrics as m
from expo_robot.observe.stats import wilson_interval
from expo_robot.observe.summary import summarize_eval

COLORS = plt.get_cmap("tab10").colors
STEPS_AXIS = "env steps"


def _style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, fontweight="bold", loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


MIN_EPISODES = 5  # a trailing mean over fewer episodes swings 0-100%: start the curve here


def _rolling_mean(steps: Sequence[int], values: Sequence[float], window: int) -> tuple[list[int], np.ndarray]:
    """(steps, trailing mean over the last `window` values), from the MIN_EPISODES-th value on."""
    v = np.asarray(values, dtype=float)
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    start = np.maximum(0, idx - window)
    first = min(MIN_EPISODES, window, v.size) - 1 if v.size else 0
    return list(steps)[first:], ((csum[idx] - csum[start]) / (idx - start))[first:]


def _episodes(records: Sequence[Mapping]) -> list[Mapping]:
    eps = [
        r for r in records if r.get("source") == "actor" and isinstance(r.get(m.EPISODE_SUCCESS), int | float)
    ]
    return sorted(eps, key=lambda r: r["step"])


def _success_panel(ax: Axes, records: Sequence[Mapping], bc_rate: float | None, window: int) -> None:
    eps = _episodes(records)
    evals = [
        r for r in records if r.get("source") == "eval" and isinstance(r.get(m.EVAL_EPISODES), int | float)
    ]
    if not eps and not evals:
        _empty(ax, "episodes")
        return
    if eps:
        steps, rolled = _rolling_mean(
            [r["step"] for r in eps], [float(r[m.EPISODE_SUCCESS]) for r in eps], window
        )
        ax.plot(steps, rolled, color=COLORS[0], lw=2, label=f"training episodes (mean of last {window})")
    if evals:
        evals.sort(key=lambda r: r["step"])
        k = np.array([r[m.EVAL_SUCCESSES] for r in evals], dtype=int)
        n = np.array([r[m.EVAL_EPISODES] for r in evals], dtype=int)
        ci = np.array([wilson_interval(int(a), int(b)) for a, b in zip(k, n)])
        p = k / n
        yerr = np.vstack([p - ci[:, 0], ci[:, 1] - p])
        steps = [r["step"] for r in evals]
        ax.errorbar(steps, p, yerr=yerr, fmt="o", color=COLORS[1], capsize=4, label="evaluation (95% Wilson)")
    if bc_rate is not None:
        ax.axhline(bc_rate, color="0.3", ls="--", lw=1.5, label=f"BC start ({bc_rate:.0%})")
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="best", fontsize=8)


def _returns_panel(ax: Axes, records: Sequence[Mapping], window: int) -> None:
    steps, returns = m.series(_episodes(records), m.EPISODE_RETURN)
    if not steps:
        _empty(ax, "episode returns")
        return
    ax.scatter(steps, returns, s=10, color=COLORS[0], alpha=0.35, label="episode")
    ax.plot(*_rolling_mean(steps, returns, window), color=COLORS[0], lw=2, label=f"mean of last {window}")
    ax.legend(loc="best", fontsize=8)


def is_q_key(key: str) -> bool:
    """Q-value metrics: a path part that is `q` or starts with `q_` (q/mean, critic/q_max, edit/q)."""
    return any(part == "q" or part.startswith("q_") for part in key.split("/"))


def is_loss_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1].endswith("loss")


def _learner_keys(records: Sequence[Mapping], want: Callable[[str], bool]) -> list[str]:
    """Learner keys that pass `want` and change over env steps (pretraining logs everything at step 0)."""
    names = []
    for key in m.keys(records, "learner"):
        if want(key) and len(set(m.series(records, key, "learner")[0])) > 1:
            names.append(key)
    return names


def _lines_panel(ax: Axes, records: Sequence[Mapping], names: list[str], what: str) -> None:
    if not names:
        _empty(ax, what)
        return
    for i, key in enumerate(names):
        steps, values = m.series(records, key, "learner")
        ax.plot(steps, values, color=COLORS[i % len(COLORS)], lw=1.5, label=key)
    ax.legend(loc="best", fontsize=8)


def _loss_panel(ax: Axes, records: Sequence[Mapping], names: list[str]) -> None:
    """Positive losses (critic, BC) on a log axis; signed ones (actor/edit losses ~ -Q) on a linear right axis."""
    if not names:
        _empty(ax, "losses")
        return
    data = {k: m.series(records, k, "learner") for k in names}
    signed = [k for k, (_, v) in data.items() if v and min(v) <= 0]
    positive = [k for k in names if k not in signed]
    handles = []
    for i, key in enumerate(positive):
        handles += ax.plot(*data[key], color=COLORS[i % 10], lw=1.5, label=key)
    if positive:
        ax.set_yscale("log")
    right = ax.twinx() if positive and signed else ax
    for j, key in enumerate(signed, start=len(positive)):
        suffix = " (right axis)" if right is not ax else ""
        handles += right.plot(*data[key], color=COLORS[j % 10], lw=1.5, ls="--", label=key + suffix)
    if right is not ax:
        right.set_ylabel("signed loss")
        right.spines[["top"]].set_visible(False)
    ax.legend(handles=handles, loc="best", fontsize=8)


def _intervention_panel(ax: Axes, records: Sequence[Mapping], window: int) -> None:
    eps = [r for r in _episodes(records) if r.get(m.EPISODE_LENGTH)]
    if not eps or not any(m.EPISODE_INTERVENTIONS in r for r in eps):
        _empty(ax, "interventions")
        return
    share = [float(r.get(m.EPISODE_INTERVENTIONS) or 0) / float(r[m.EPISODE_LENGTH]) for r in eps]
    ax.plot(*_rolling_mean([r["step"] for r in eps], share, window), color=COLORS[3], lw=2,
            label=f"share of steps, mean of last {window} episodes")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="best", fontsize=8)


def _learner_panel(ax: Axes, records: Sequence[Mapping]) -> None:
    steps, updates = m.series(records, m.LEARNER_UPDATES, "learner")
    b_steps, buffer = m.series(records, m.BUFFER_SIZE)
    if not steps and not b_steps:
        _empty(ax, "learner progress")
        return
    handles = ax.plot(steps, updates, color=COLORS[4], lw=2, label="gradient updates")
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    if b_steps:
        right = ax.twinx()
        handles += right.plot(
            b_steps, buffer, color=COLORS[5], lw=2, ls="--", label="replay buffer (right axis)"
        )
        right.set_ylabel("transitions in buffer")
        right.yaxis.set_major_formatter(EngFormatter(sep=""))
        right.spines[["top"]].set_visible(False)
    ax.legend(handles=handles, loc="upper left", fontsize=8)


def _hist_panel(ax: Axes, values: Sequence[float], what: str, color, target_ms: float | None = None) -> None:
    """Histogram in ms with p50/p99 in the legend; the slowest 0.1% are piled into the last bin."""
    if not len(values):
        _empty(ax, what)
        return
    v = np.asarray(values, dtype=float)
    lo, hi = float(v.min()), float(np.percentile(v, 99.9))
    if target_ms:
        lo, hi = min(lo, target_ms * 0.9), max(hi, target_ms * 1.2)
    top = max(hi, lo + 1e-3)
    bins = np.linspace(lo, top * 1.02, 60)
    p50, p99 = np.percentile(v, [50, 99])
    ax.hist(np.clip(v, None, bins[-1]), bins=bins, color=color, alpha=0.7,
            label=f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {v.max():.1f} ms (n={v.size})")  # fmt: skip
    if target_ms:
        late = np.mean(v > target_ms * 1.1)
        ax.axvline(target_ms, color="0.2", ls="--", lw=1.5, label=f"target {target_ms:g} ms")
        ax.axvspan(target_ms * 1.1, bins[-1], color="tab:red", alpha=0.08,
                   label=f"overrun (>10% late): {late:.2%}")  # fmt: skip
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=8)


def plot_finetune(records: Sequence[Mapping], out_path: str | Path, **kwargs: Any) -> Path:
    """Draw finetune_figure(records, **kwargs) into a PNG."""
    return _save(finetune_figure(records, **kwargs), out_path)


def finetune_figure(
    records: Sequence[Mapping],
    *,
    bc_success_rate: float | None = None,
    target_period_ms: float | None = None,
    window: int = 20,
    title: str = "Fine-tune session",
) -> Figure:
    """Eight panels: success rate (BC start dashed), returns, Q values, losses, interventions, learner progress,
    loop period and policy step latency histograms. x axis: env steps."""
    fig, axes = plt.subplots(4, 2, figsize=(14, 15), layout="constrained")
    (a_succ, a_ret), (a_q, a_loss), (a_int, a_learn), (a_period, a_lat) = axes
    _success_panel(a_succ, records, bc_success_rate, window)
    _style(a_succ, "Success rate", STEPS_AXIS, "success rate")
    _returns_panel(a_ret, records, window)
    _style(a_ret, "Episode return", STEPS_AXIS, "return (sum of rewards)")
    _lines_panel(a_q, records, _learner_keys(records, is_q_key), "Q values")
    _style(a_q, "Q values (learner)", STEPS_AXIS, "Q")
    _loss_panel(a_loss, records, _learner_keys(records, is_loss_key))
    _style(a_loss, "Losses (learner)", STEPS_AXIS, "loss (log scale)")
    _intervention_panel(a_int, records, window)
    _style(a_int, "Operator interventions", STEPS_AXIS, "intervention rate")
    _learner_panel(a_learn, records)
    _style(a_learn, "Learner progress", STEPS_AXIS, "gradient updates")
    _hist_panel(a_period, m.series(records, m.LOOP_PERIOD_MS)[1], "loop periods", COLORS[0], target_period_ms)
    _style(a_period, "Control loop period", "period (ms)", "ticks (log scale)")
    _hist_panel(a_lat, m.series(records, m.POLICY_LATENCY_MS)[1], "policy latency", COLORS[2])
    _style(
        a_lat, "Policy step latency (observation in → chunk out)", "latency (ms)", "policy steps (log scale)"
    )
    for ax in (a_succ, a_ret, a_q, a_loss, a_int, a_learn):
        if ax.has_data():
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    fig.suptitle(title, fontsize=14, fontweight="bold")
    return fig


def _save(fig: Figure, out_path: str | Path) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _success_bars(ax: Axes, summaries: list[dict]) -> None:
    labels = [s["label"] for s in summaries]
    rates = np.array([s["success"]["rate"] for s in summaries])
    ci = np.array([s["success"]["ci95"] for s in summaries])
    x = np.arange(len(summaries))
    ax.bar(x, rates, color=[COLORS[i % 10] for i in x], alpha=0.8, width=0.6)
    ax.errorbar(
        x,
        rates,
        yerr=np.vstack([rates - ci[:, 0], ci[:, 1] - rates]),
        fmt="none",
        ecolor="0.15",
        capsize=8,
        lw=1.5,
    )
    for i, s in enumerate(summaries):
        k, n = s["success"]["successes"], s["success"]["n"]
        ax.text(
            i, min(ci[i, 1] + 0.03, 1.02), f"{rates[i]:.0%}\n{k}/{n}", ha="center", va="bottom", fontsize=9
        )
    ax.set_xticks(x, labels)
    ax.set_xlim(-0.8, len(summaries) - 0.2)  # keeps one bar as narrow as two
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _stop_bars(ax: Axes, summaries: list[dict]) -> None:
    reasons = sorted({r for s in summaries for r in s["stops"]}, key=lambda r: (r != "success", r))
    if not reasons:
        _empty(ax, "episodes")
        return
    y = np.arange(len(reasons))
    height = 0.8 / len(summaries)
    for i, s in enumerate(summaries):
        counts = [s["stops"].get(r, 0) for r in reasons]
        bars = ax.barh(y + (i - (len(summaries) - 1) / 2) * height, counts, height=height, color=COLORS[i % 10],
                       alpha=0.8, label=s["label"])  # fmt: skip
        ax.bar_label(bars, labels=[str(c) if c else "" for c in counts], fontsize=8, padding=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks(y, reasons)
    ax.invert_yaxis()
    ax.legend(loc="best", fontsize=8)


def _hist_by_policy(
    ax: Axes, samples: list[tuple[str, np.ndarray]], what: str, integer: bool = False
) -> None:
    present = [(label, v) for label, v in samples if v.size]
    if not present:
        _empty(ax, what)
        return
    hi = max(float(np.percentile(v, 99.5)) for _, v in present)
    lo = min(float(v.min()) for _, v in present)
    if integer:
        bins = np.arange(math.floor(lo), math.ceil(hi) + 2) - 0.5
        if bins.size > 60:
            bins = np.linspace(bins[0], bins[-1], 60)
    else:
        bins = np.linspace(0, hi * 1.05 if hi > 0 else 1.0, 50)
    for i, (label, v) in enumerate(present):
        med = float(np.median(v))
        clipped = np.clip(v, None, bins[-1])
        color = COLORS[i % 10]
        ax.hist(
            clipped, bins=bins, color=color, alpha=0.25
        )  # light fill, crisp outline: overlaps stay readable
        ax.hist(clipped, bins=bins, color=color, histtype="step", lw=1.8, label=f"{label} (median {med:.3g})")
    ax.legend(loc="best", fontsize=8)


def plot_eval(results: Sequence[Mapping], out_path: str | Path, title: str = "Evaluation") -> Path:
    """Draw eval_figure(results, title) into a PNG."""
    return _save(eval_figure(results, title), out_path)


def eval_figure(results: Sequence[Mapping], title: str = "Evaluation") -> Figure:
    """Four panels: success rate with 95% Wilson bars per policy, stop reasons, episode lengths, step latency."""
    summaries = [summarize_eval(r) for r in results]
    fig, ((a_succ, a_stop), (a_len, a_lat)) = plt.subplots(2, 2, figsize=(13, 9), layout="constrained")
    _success_bars(a_succ, summaries)
    _style(a_succ, "Success rate (95% Wilson interval)", "policy", "success rate")
    _stop_bars(a_stop, summaries)
    _style(a_stop, "Why episodes ended", "episodes", "")
    lengths = [(s["label"], np.array([e["length"] for e in r.get("episodes", [])], float))
               for s, r in zip(summaries, results)]  # fmt: skip
    _hist_by_policy(a_len, lengths, "episodes", integer=True)
    _style(a_len, "Episode length", "length (steps)", "episodes")
    latencies = [
        (s["label"], np.asarray(r.get("policy_latency_ms", []), float)) for s, r in zip(summaries, results)
    ]
    _hist_by_policy(a_lat, latencies, "policy latency")
    _style(a_lat, "Policy step latency (observation in → chunk out)", "latency (ms)", "policy steps")
    fig.suptitle(title, fontsize=14, fontweight="bold")
    return fig
