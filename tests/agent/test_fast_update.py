"""`agent.fast`: the fast update is the eager update (same random draws, same arithmetic up to float rounding), its
backup still takes the OTF argmax, and agents it does not cover run the eager one.

Tolerance: parameters and metrics agree to rtol 1e-5 / atol 1e-6 after 3 updates (the fast path's batched matmuls
and fused Adam round differently in the last bits; the random streams end in the same state).
"""

import logging

import numpy as np
import pytest
import torch
from agent_fixtures import build, random_buffer

from expo_robot.agent.select import select

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _updated_pair(name: str, updates: int = 3, **overrides):
    eager = build(name, fast=False, **overrides)
    fast = build(name, fast=True, **overrides)
    assert eager.fast_update is None and fast.fast_update is not None
    off, on = random_buffer(40, 1), random_buffer(40, 2)
    for _ in range(updates):
        m_eager, m_fast = eager.update(off, on), fast.update(off, on)
    return eager, fast, m_eager, m_fast


def _assert_same_agents(eager, fast, m_eager, m_fast):
    assert set(m_eager) == set(m_fast)
    for k, v in m_eager.items():
        assert float(m_fast[k]) == pytest.approx(float(v), rel=TOL["rtol"], abs=TOL["atol"]), k
    for name, module in eager.modules.items():
        other = fast.modules[name].state_dict()
        for k, v in module.state_dict().items():
            torch.testing.assert_close(other[k], v, **TOL, msg=f"{name}.{k}")
    assert torch.equal(eager.gen.get_state(), fast.gen.get_state())
    assert torch.equal(eager.cpu_gen.get_state(), fast.cpu_gen.get_state())
    assert eager.rng.bit_generator.state == fast.rng.bit_generator.state


@pytest.mark.parametrize(
    ("name", "sampler"), [("expo", "exact"), ("best_of_n", "exact"), ("expo", "distilled")]
)
def test_fast_update_equals_eager_update(name, sampler):
    # utd 3: the batched proposals cover several minibatches whose target critic moves in between
    select = {"n_backup": 3, "proposal_steps": 2, "backup_sampler": sampler}
    _assert_same_agents(*_updated_pair(name, utd=3, select=select))


def test_fast_update_metrics_are_tensors_read_on_demand():
    _, _, _, metrics = _updated_pair("expo", updates=1)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for k, v in metrics.items() if k != "updates")
    assert np.isfinite([float(v) for v in metrics.values()]).all()


@pytest.mark.slow
def test_compiled_fast_update_equals_eager_update():
    # torch.compile needs minutes on a 2-core CPU: slow. Fused kernels reorder sums, hence a looser tolerance.
    eager, fast, _, _ = _updated_pair(
        "expo", utd=2, compile=True, select={"n_backup": 3, "proposal_steps": 2}
    )
    assert (
        fast.fast_update.compile_s is not None
        and fast.fast_update.fns["td_target"] is not fast.fast_update._td_target
    )
    for name, module in eager.modules.items():
        other = fast.modules[name].state_dict()
        for k, v in module.state_dict().items():
            torch.testing.assert_close(other[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


def test_fast_backup_takes_the_otf_action():
    """The fast path's target is r + discount * the score of the candidate `select` picks, among the same 2N."""
    agent = build("expo", fast=True, select={"n_backup": 5})
    fast, n, d = agent.fast_update, 16, agent.act_dim
    off, on = random_buffer(40, 1), random_buffer(40, 2)
    agent.ensure_normalizer(off)
    from expo_robot.agent.fast_update import symmetric_indices

    t = fast._batch(symmetric_indices(off, on, n, 1, agent.rng), n)
    base_noise, edit_noise, subsets = fast._draws(n, 1)
    with torch.no_grad():
        candidates = fast.fns["candidates"](t["next_obs"], base_noise, edit_noise)
        target = fast.fns["td_target"](t["next_obs"], candidates, subsets[0], t["reward"], t["discount"])
    proposals = agent.base.sample(t["next_obs"], 5, agent.cfg["select"]["proposal_steps"], noise=base_noise)
    sel = select(
        t["next_obs"], agent.critic_target, subsets[0], proposals=proposals, edit=agent.edit,
        edit_noise=edit_noise.reshape(n, 5, d),
    )  # fmt: skip
    torch.testing.assert_close(candidates, sel.candidates)
    torch.testing.assert_close(target, t["reward"] + t["discount"] * sel.q)
    assert (sel.index >= 5).any()  # edited candidates can win: the argmax runs over all 2N


def test_agents_the_fast_path_does_not_cover_run_the_eager_update(caplog):
    with caplog.at_level(logging.INFO, logger="expo_robot.agent.expo"):
        agent = build("expo", fast=True, select={"proposal_cache_age": 3})
    assert agent.fast_update is None
    assert "proposal cache" in caplog.text and "eager update" in caplog.text
    assert build("expo_no_otf_backup", fast=True).fast_update is None
    metrics = agent.update(random_buffer(20, 1), random_buffer(20, 2))
    assert isinstance(metrics["critic/loss"], float)


def test_the_distilled_proposer_learns_where_the_base_lands():
    agent = build("expo", select={"backup_sampler": "distilled"})
    obs = torch.randn(64, agent.obs_dim)
    losses = [float(agent.distill_step(obs)) for _ in range(150)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    # the backup's proposals come from it, not from the base: a proposer moved away changes them
    z = torch.randn(64 * 3, agent.act_dim)
    before = agent.proposer.sample(obs, 3, noise=z)
    with torch.no_grad():
        agent.proposer.net.out[-1].bias.add_(0.3)
    assert not torch.allclose(agent.proposer.sample(obs, 3, noise=z), before)


def test_an_unknown_backup_sampler_is_named():
    with pytest.raises(ValueError, match="exact or distilled"):
        build("expo", select={"backup_sampler": "magic"})


def test_a_bf16_backup_keeps_fp32_targets_close_to_the_exact_ones():
    eager, fast, _, metrics = _updated_pair("expo", updates=2, backup_bf16=True)
    assert fast.fast_update.backup_bf16 and metrics["q/target_mean"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in fast.critic.parameters())
    close = {"rtol": 0.05, "atol": 0.02}  # bf16 keeps 8 bits of mantissa: same update, not the same digits
    torch.testing.assert_close(fast.critic.state_dict(), eager.critic.state_dict(), **close)
