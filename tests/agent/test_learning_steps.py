"""The TD backup (OTF vs the ablation), one update's composition, BC overfitting, checkpoints and acting state."""

import io

import numpy as np
import pytest
import torch
from agent_fixtures import SPEC, build, random_buffer

from expo_robot.agent import AgentSpec, AgentStateError, make_agent
from expo_robot.agent.select import select
from expo_robot.data.replay import ReplayBuffer, sample_symmetric


def batch_tensors(agent, n=16):
    batch = sample_symmetric(random_buffer(40, 1), random_buffer(40, 2), n, np.random.default_rng(0))
    agent.ensure_normalizer(random_buffer(40, 1))
    return agent.tensors(batch)


def test_backup_uses_the_otf_action():
    agent = build("expo", select={"n_backup": 5})
    t = batch_tensors(agent)
    state = (agent.gen.get_state(), agent.cpu_gen.get_state())
    target, next_action = agent.td_target(t)
    # replay the same random streams through the shared selection function
    agent.gen.set_state(state[0])
    agent.cpu_gen.set_state(state[1])
    proposals = agent.base.sample(t["next_obs"], 5, agent.cfg["select"]["proposal_steps"], agent.gen)
    sel = select(
        t["next_obs"],
        agent.critic_target,
        agent.subset(),
        proposals=proposals,
        edit=agent.edit,
        generator=agent.gen,
    )
    torch.testing.assert_close(next_action, sel.action)
    torch.testing.assert_close(target, t["reward"] + t["discount"] * sel.q)
    # the chosen action is the best of all 2N candidates under the target critic
    assert (sel.q >= sel.scores.max(1).values - 1e-6).all() and sel.candidates.shape[1] == 10


def test_ablation_backup_does_not_select():
    agent = build("expo_no_otf_backup", select={"n_backup": 5})
    t = batch_tensors(agent)
    state = (agent.gen.get_state(), agent.cpu_gen.get_state())
    _, next_action = agent.td_target(t)
    agent.gen.set_state(state[0])
    agent.cpu_gen.set_state(state[1])
    one = agent.base.sample(t["next_obs"], 1, agent.cfg["select"]["proposal_steps"], agent.gen)[:, 0]
    edited, _ = agent.edit(t["next_obs"], one, generator=agent.gen)
    torch.testing.assert_close(next_action, edited)  # one edited sample, no argmax over candidates
    otf_agent = build("expo", select={"n_backup": 5})
    otf_agent.load_state_dict({**agent.state_dict(), "agent": "ExpoAgent"})
    otf_agent.gen.set_state(state[0])
    otf_agent.cpu_gen.set_state(state[1])
    _, otf_action = otf_agent.td_target(t)
    assert not torch.allclose(otf_action, next_action)


def test_proposal_cache_reuses_and_refreshes():
    agent = build("expo", select={"proposal_cache_age": 3, "n_backup": 4})
    off, on = random_buffer(20, 1), random_buffer(20, 2)
    for _ in range(6):
        metrics = agent.update(off, on)
    # 20-row buffers sampled 64 rows per step: most rows repeat within 3 updates
    assert 0.3 < metrics["backup/cache_hit_rate"] < 1.0


def test_update_reports_namespaced_metrics_and_counts():
    for name, keys in {
        "expo": [
            "critic/loss",
            "critic/grad_norm",
            "q/mean",
            "edit/entropy",
            "edit/grad_norm",
            "alpha",
            "base/loss",
        ],
        "rlpd": ["critic/loss", "q/mean", "actor/entropy", "actor/grad_norm", "alpha"],
        "best_of_n": ["critic/loss", "base/loss"],
    }.items():
        agent = build(name, utd=3)
        metrics = agent.update(random_buffer(50, 1), random_buffer(50, 2))
        assert all(k in metrics and np.isfinite(metrics[k]) for k in keys), (name, metrics)
        assert agent.counters["updates"] == 1


@pytest.mark.timeout(120)
def test_bc_overfits_a_tiny_dataset():
    """Eight states, each with one fixed chunk: after imitation the EMA base reproduces them closely."""
    spec = AgentSpec(4, 2, [-1.0, -1.0], [1.0, 1.0], 2)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(8, 4, 2, 2)
    obs = rng.normal(size=(8, 4)).astype(np.float32)
    chunks = rng.uniform(-0.8, 0.8, size=(8, 2, 2)).astype(np.float32)
    buf.add_batch(
        {
            "obs": obs,
            "actions": chunks,
            "reward": np.zeros(8, np.float32),
            "next_obs": obs,
            "discount": np.ones(8, np.float32),
            "steps": np.full(8, 2),
        }
    )
    from agent_fixtures import agent_cfg

    agent = make_agent(agent_cfg("bc", pretrain={"batch_size": 64, "ema_rate": 0.05}), spec, "cpu", seed=0)
    before = np.abs(agent.act_batch(obs, "eval") - chunks).mean()
    metrics = agent.pretrain(buf, 1500)
    after = np.abs(np.stack([agent.act_batch(obs, "eval") for _ in range(4)]) - chunks).mean()
    assert metrics["pretrain/steps"] == 1500 and after < 0.05 < before, (before, after)


@pytest.mark.parametrize("name", ["expo", "rlpd", "bc"])
def test_checkpoint_round_trip_is_exact(name, tmp_path):
    off, on = random_buffer(50, 1), random_buffer(50, 2)
    agent = build(name)
    agent.pretrain(off, 3)
    for _ in range(2):
        agent.update(off, on)
    path = tmp_path / "ckpt.pt"
    torch.save(agent.state_dict(), path)
    clone = build(name, seed=123)
    clone.load_state_dict(torch.load(path, weights_only=False))
    for k, m in agent.modules.items():
        for (pk, a), (_, b) in zip(m.state_dict().items(), clone.modules[k].state_dict().items()):
            assert torch.equal(a, b), (k, pk)
    # same future: optimiser moments, counters, temperature and random streams all came back
    assert clone.counters == agent.counters
    m1, m2 = agent.update(off, on), clone.update(off, on)
    assert m1 == m2
    s = np.zeros(SPEC.state_dim, np.float32)
    np.testing.assert_array_equal(agent.act(s), clone.act(s))


def test_acting_state_round_trip_and_mismatch():
    agent = build("expo")
    agent.pretrain(random_buffer(30), 2)
    state = agent.acting_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert not any(k.startswith(("critic.", "base.", "temperature")) for k in state)  # only what acting needs
    raw = {
        k: np.frombuffer(v.tobytes(), v.dtype).reshape(v.shape) for k, v in state.items()
    }  # as off a socket
    actor = build("expo", seed=5)
    actor.load_acting_state(raw)
    s = np.ones(SPEC.state_dim, np.float32)
    (
        agent.gen.manual_seed(1),
        actor.gen.manual_seed(1),
        agent.cpu_gen.manual_seed(2),
        actor.cpu_gen.manual_seed(2),
    )
    np.testing.assert_allclose(agent.act(s, "eval"), actor.act(s, "eval"), atol=1e-6)
    with pytest.raises(AgentStateError, match="same agent config"):
        build("expo", edit={"hidden": 32, "depth": 2}).load_acting_state(state)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    with pytest.raises(AgentStateError, match="config it was saved with"):
        build("rlpd").load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
