"""Figures drawn from synthetic metrics: the right panels, the right data in them, and PNGs with real content."""

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from expo_robot.observe.metrics import read_metrics
from expo_robot.observe.plots import (
    eval_figure,
    finetune_figure,
    is_loss_key,
    is_q_key,
    plot_eval,
    plot_finetune,
)
from expo_robot.observe.stats import wilson_interval
from expo_robot.observe.summary import summarize_eval

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def finetune_records(finetune_run):
    return read_metrics(finetune_run)


def _titles(fig):
    return [ax.get_title(loc="left") for ax in fig.axes]


def _ink(png) -> float:
    """Share of pixels that are not (near) white."""
    image = mpimg.imread(png)[..., :3]
    return float(np.mean(image.min(axis=-1) < 0.9))


def test_finetune_figure_has_every_panel_with_its_data(finetune_records):
    fig = finetune_figure(finetune_records, bc_success_rate=0.4, target_period_ms=100.0, window=10)
    titles = _titles(fig)
    for title in ("Success rate", "Episode return", "Q values (learner)", "Losses (learner)",
                  "Operator interventions", "Learner progress", "Control loop period"):  # fmt: skip
        assert title in titles
    success = fig.axes[titles.index("Success rate")]
    bc = [ln for ln in success.get_lines() if ln.get_linestyle() == "--"]
    assert len(bc) == 1 and bc[0].get_ydata()[0] == pytest.approx(0.4)
    legend = [t.get_text() for t in success.get_legend().get_texts()]
    assert "BC start (40%)" in legend and "evaluation (95% Wilson)" in legend
    q = fig.axes[titles.index("Q values (learner)")]
    assert sorted(ln.get_label() for ln in q.get_lines()) == ["edit/q", "q/mean", "q/target_mean"]
    loss = fig.axes[titles.index("Losses (learner)")]
    assert loss.get_yscale() == "log"  # critic/loss is positive; edit/loss (negative) is on the twin axis
    labels = [t.get_text() for t in loss.get_legend().get_texts()]
    assert labels == ["critic/loss", "edit/loss (right axis)"]  # pretrain/loss (all at step 0) left out
    period = fig.axes[titles.index("Control loop period")]
    assert sum(p.get_height() for p in period.patches if hasattr(p, "get_height")) > 0
    for ax in fig.axes:
        if ax.get_title(loc="left"):
            assert ax.get_xlabel() and ax.get_ylabel(), (
                f"panel '{ax.get_title(loc='left')}' lacks axis labels"
            )


def test_finetune_png_has_real_content(finetune_records, tmp_path):
    path = plot_finetune(finetune_records, tmp_path / "plots" / "finetune.png", bc_success_rate=0.4)
    assert path.exists() and path.stat().st_size > 50_000
    height, width = mpimg.imread(path).shape[:2]
    assert (width, height) == (1540, 1650)
    assert _ink(path) > 0.05


def test_metric_name_rules():
    assert all(is_q_key(k) for k in ("q/mean", "q/target_mean", "edit/q", "critic/q_max"))
    assert not any(is_q_key(k) for k in ("quality", "edit/entropy", "critic/loss"))
    assert is_loss_key("critic/loss") and is_loss_key("bc_loss") and not is_loss_key("loss/scale")


def test_finetune_figure_without_metrics_says_so():
    fig = finetune_figure([])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no episodes logged" in texts and "no loop periods logged" in texts


def test_eval_figure_shows_rates_with_wilson_bars_and_stop_reasons(tmp_path, make_eval_result):
    results = [make_eval_result("finetuned", 0.8, seed=1), make_eval_result("bc", 0.4, seed=2)]
    fig = eval_figure(results)
    titles = _titles(fig)
    bars = fig.axes[titles.index("Success rate (95% Wilson interval)")]
    summaries = [summarize_eval(r) for r in results]
    heights = [p.get_height() for p in bars.patches]
    assert heights == pytest.approx([s["success"]["rate"] for s in summaries])
    caps = bars.collections[0].get_segments()  # error bar segments: (x, low) -> (x, high)
    for seg, s in zip(caps, summaries):
        k, n = s["success"]["successes"], s["success"]["n"]
        assert (seg[0][1], seg[1][1]) == pytest.approx(wilson_interval(k, n))
    stops = fig.axes[titles.index("Why episodes ended")]
    reasons = [t.get_text() for t in stops.get_yticklabels()]
    assert reasons[0] == "success" and "safety:workspace" in reasons
    counted = sum(p.get_width() for p in stops.patches)
    assert counted == sum(len(r["episodes"]) for r in results)
    path = plot_eval(results, tmp_path / "eval.png")
    assert path.stat().st_size > 30_000 and _ink(path) > 0.05


def test_trailing_mean_starts_after_a_few_episodes():
    from expo_robot.observe.plots import _rolling_mean

    steps, mean = _rolling_mean([1, 2, 3, 4, 5, 6, 7], [1, 0, 0, 1, 1, 1, 0], window=3)
    assert steps == [3, 4, 5, 6, 7]  # from the 3rd episode (window 3 < MIN_EPISODES 5)
    assert mean == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0, 2 / 3])
    steps, mean = _rolling_mean(list(range(10)), [1.0] * 5 + [0.0] * 5, window=20)
    assert steps[0] == 4 and mean[0] == 1.0 and mean[-1] == pytest.approx(0.5)
