"""RLPD against its reference: the entropy term in the TD target, the per-step (H=1) variant, the temperature."""

import numpy as np
import torch
from agent_fixtures import build, random_buffer

from expo_robot.agent import AgentSpec, make_agent
from expo_robot.bench.learning import agent_config
from expo_robot.data.replay import sample_symmetric


def tiny_batch(agent, n=4):
    batch = sample_symmetric(random_buffer(20, 1), random_buffer(20, 2), n, np.random.default_rng(0))
    agent.ensure_normalizer(random_buffer(20, 1))
    return agent.tensors(batch)


def hand_target(agent, t, state, entropy: bool):
    """r + discount * (min over the drawn subset of Q'(s', a') - alpha * log pi(a'|s')), replaying the draws."""
    agent.gen.set_state(state[0])
    agent.cpu_gen.set_state(state[1])
    with torch.no_grad():
        a, logp = agent.actor(t["next_obs"], generator=agent.gen)
        subset = torch.randperm(agent.critic.members, generator=agent.cpu_gen)[
            : agent.cfg["critic"]["subset"]
        ]
        q_all = agent.critic_target(t["next_obs"], a)  # [E, B]
        rows = []
        for i in range(t["reward"].shape[0]):  # element by element, from the members' values
            q = min(float(q_all[m, i]) for m in subset.tolist())
            ent = float(agent.temperature()) * float(logp[i]) if entropy else 0.0
            rows.append(float(t["reward"][i]) + float(t["discount"][i]) * (q - ent))
    return torch.tensor(rows), logp


def test_entropy_backup_matches_a_hand_computation_and_can_be_turned_off():
    agent = build("rlpd", alpha={"init": 0.5})
    t = tiny_batch(agent)
    state = (agent.gen.get_state(), agent.cpu_gen.get_state())
    with_entropy = agent.td_target(t)
    expected, logp = hand_target(agent, t, state, entropy=True)
    torch.testing.assert_close(with_entropy, expected, rtol=1e-5, atol=1e-5)

    agent.cfg["backup_entropy"] = False
    agent.gen.set_state(state[0])
    agent.cpu_gen.set_state(state[1])
    without = agent.td_target(t)
    torch.testing.assert_close(without, hand_target(agent, t, state, entropy=False)[0], rtol=1e-5, atol=1e-5)
    # the difference is exactly the discounted entropy term of the next chunk, and it is not zero
    torch.testing.assert_close(with_entropy - without, -t["discount"] * 0.5 * logp, rtol=1e-4, atol=1e-5)
    assert (with_entropy - without).abs().min() > 1e-3


def test_config_keeps_the_reference_defaults():
    ref = agent_config("rlpd", "reference")
    assert ref["backup_entropy"] is True and ref["utd"] == 20 and ref["batch_size"] == 256
    assert (ref["critic"]["members"], ref["critic"]["subset"]) == (10, 2)
    assert ref["alpha"]["init"] == 1.0 and ref["alpha"]["target_entropy"] is None
    assert ref["actor"]["depth"] == ref["critic"]["depth"] == 2 and ref["chunk"] == 4
    assert build("rlpd").target_entropy == -3 * 2 / 2  # -d/2, d = H * action_dim of the fixtures' spec


def test_per_step_variant_acts_one_step_at_a_time_and_updates():
    params = agent_config("rlpd_step", "demo")
    assert params["chunk"] == 1 and agent_config("rlpd", "demo")["chunk"] == 4
    spec = AgentSpec(5, 2, [-1.0, 0.0], [1.0, 2.0], params["chunk"])
    agent = make_agent(params, spec, device="cpu", seed=0)
    assert agent.act(np.zeros(5, np.float32)).shape == (1, 2)
    assert agent.target_entropy == -1.0
    off, on = random_buffer(30, 1, spec), random_buffer(30, 2, spec)
    before = [p.detach().clone() for p in agent.critic.parameters()]
    metrics = agent.update(off, on)
    assert all(np.isfinite(metrics[k]) for k in ("critic/loss", "actor/entropy", "alpha"))
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters()))


def test_temperature_moves_toward_the_target_entropy():
    off, on = random_buffer(40, 1), random_buffer(40, 2)
    for target, direction in ((50.0, 1), (-50.0, -1)):  # far above / below the policy's entropy
        agent = build("rlpd", alpha={"lr": 0.05, "target_entropy": target})
        alphas = [float(agent.update(off, on)["alpha"]) for _ in range(5)]
        assert all(direction * (b - a) > 0 for a, b in zip([1.0, *alphas], alphas)), (target, alphas)
