"""Both base parameterisations sample inside [-1, 1] and learn; the DDPM base refuses a step count it cannot do."""

import pytest
import torch

from expo_robot.agent.base_policy import make_base

CFG = {"hidden": 32, "blocks": 1, "time_dim": 8, "dropout": 0.0, "steps": 10, "expand": 2}


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_samples_in_bounds_and_loss_falls(kind):
    torch.manual_seed(0)
    base = make_base(kind, 3, 4, CFG)
    obs = torch.randn(32, 3)
    target = torch.tanh(obs @ torch.randn(3, 4))  # a deterministic function of the state
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = base.loss(obs, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20
    samples = base.sample(obs, 5)
    assert samples.shape == (32, 5, 4) and samples.abs().max() <= 1.0


def test_ddpm_rejects_fewer_proposal_steps():
    base = make_base("ddpm", 3, 4, CFG)
    with pytest.raises(ValueError, match="proposal_steps"):
        base.sample(torch.zeros(1, 3), 2, steps=4)
    with pytest.raises(ValueError, match="unknown base"):
        make_base("gan", 3, 4, CFG)


def test_expo_with_ddpm_base_learns_one_update():
    import numpy as np
    from agent_fixtures import build, random_buffer

    with pytest.raises(ValueError, match="proposal_steps=null"):
        build("expo", base={"kind": "ddpm"})
    agent = build("expo", base={"kind": "ddpm"}, select={"proposal_steps": None})
    metrics = agent.update(random_buffer(30, 1), random_buffer(30, 2))
    assert np.isfinite(metrics["critic/loss"]) and agent.act(np.zeros(5, np.float32)).shape == (3, 2)


def test_traced_flow_sampling_is_the_eager_loop_and_follows_weight_changes():
    import copy

    torch.manual_seed(0)
    traced, eager = make_base("flow", 3, 4, CFG), make_base("flow", 3, 4, {**CFG, "jit": False})
    eager.load_state_dict(traced.state_dict())
    obs = torch.randn(2, 3)

    def both(n=5):
        a = traced.sample(obs, n, generator=torch.Generator().manual_seed(1))
        b = eager.sample(obs, n, generator=torch.Generator().manual_seed(1))
        return a, b

    torch.testing.assert_close(*both())
    assert len(traced._graphs) == 1 and not eager._graphs
    with torch.no_grad():  # an optimiser / EMA step changes the parameters in place
        for p, q in zip(traced.parameters(), eager.parameters()):
            p.add_(0.05)
            q.add_(0.05)
    torch.testing.assert_close(*both())
    new = make_base("flow", 3, 4, CFG).state_dict()  # weights from the learner
    traced.load_state_dict(new)
    eager.load_state_dict(new)
    torch.testing.assert_close(*both())
    ema = copy.deepcopy(traced)  # a copy traces its own graph over its own parameters
    assert not ema._graphs
    with torch.no_grad():
        for p in ema.parameters():
            p.zero_()
    g = torch.Generator().manual_seed(1)
    assert not torch.allclose(ema.sample(obs, 5, generator=g), both()[0])
    torch.testing.assert_close(*both())


def test_euler_loop_with_fixed_inputs_is_the_plain_loop_over_the_net():
    """The sampler computes the first layer's obs and time terms once; the result is the textbook Euler loop."""
    torch.manual_seed(0)
    base = make_base("flow", 3, 4, {**CFG, "jit": False})
    obs, x0 = torch.randn(6, 3), torch.randn(6, 4)
    x, dt = x0, 1.0 / CFG["steps"]
    with torch.no_grad():
        for i in range(CFG["steps"]):
            x = x + dt * base.net(obs, x, torch.full((1, 1), i * dt))
        torch.testing.assert_close(base._integrate(obs, x0, CFG["steps"]), x, rtol=1e-5, atol=1e-5)
