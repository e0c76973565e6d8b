"""`expo-robot bench policy`'s timed step runs the actor's path (decode, act, encode), with and without a camera."""

from expo_robot.bench.policy import CAMERA, _agent, time_policy_steps
from expo_robot.config import load_config


def test_policy_step_timing_with_and_without_a_camera():
    cfg = load_config(["profile=demo"])
    for cameras in (None, CAMERA):
        agent, spec = _agent(cfg, "cpu", cameras)
        assert dict(spec.images) == (cameras or {})
        ms = time_policy_steps(agent, spec, 5)
        assert len(ms) == 5 and all(m > 0 for m in ms)
