"""The fine-tune launcher's live status: from its first second it names the phase and how far it has got."""

import logging

from expo_robot.observe.live import LiveStatus
from expo_robot.observe.metrics import MetricsLogger
from expo_robot.runtime.launcher import MetricsTail


def test_the_phase_and_its_progress_from_the_first_second(tmp_path):
    tail = MetricsTail(tmp_path / "metrics.jsonl", env_steps_budget=1000)
    phases = [tail.poll()["phase"]]  # nothing logged yet: the processes are starting
    metrics = MetricsLogger(tmp_path, tensorboard=False)

    def phase_after(step: int, source: str, **values) -> str:
        metrics.log(step, source, **values)
        metrics.flush()
        return tail.poll()["phase"]

    phases += [
        phase_after(0, "learner", phase="learner: loading the offline data"),
        phase_after(0, "learner", **{"seed/episodes": 5, "seed/total": 50, "seed/successes": 2}),
        phase_after(0, "learner", **{"pretrain/step": 1200, "pretrain/steps": 3000, "pretrain/base/loss": 0.8123}),
        phase_after(0, "eval", **{"eval/label": "before", "eval/done": 3, "eval/of": 20, "eval/successes_so_far": 1}),
        phase_after(0, "eval", **{"eval/label": "before", "eval/successes": 4, "eval/episodes": 20}),
        phase_after(412, "actor", **{"episode/success": 1.0, "episode/length": 31}),
        phase_after(1000, "eval", **{"eval/label": "after", "eval/done": 1, "eval/of": 20, "eval/successes_so_far": 1}),
    ]  # fmt: skip
    metrics.close()
    assert phases == [
        "starting the driver, the learner and the actor",
        "learner: loading the offline data",
        "seed data 5/50 episodes (2 successful)",
        "pretraining 1,200/3,000 steps, loss 0.812",
        "evaluation before 3/20 episodes (1 successful)",
        "fine-tuning 0/1,000 env steps",
        "fine-tuning 412/1,000 env steps",
        "evaluation after 1/20 episodes (1 successful)",
    ]
    assert tail.latest["eval before"] == "4/20"  # the progress records leave the before/after results alone


def test_the_first_status_line_is_never_blank(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    tail = MetricsTail(tmp_path / "metrics.jsonl", env_steps_budget=1000)
    with LiveStatus("off", title="finetune") as live:
        live.update(**tail.poll())
    first = next(r.getMessage() for r in caplog.records if r.name == "expo_robot.status")
    assert first == "finetune: phase starting the driver, the learner and the actor"
