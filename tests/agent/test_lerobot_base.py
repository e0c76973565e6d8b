"""A lerobot policy as EXPO's base: a tiny DiffusionPolicy with random weights, written by lerobot's own
save_pretrained (policy and processors), loaded back through the adapter, proposing candidates for `select`."""

import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors

from expo_robot.agent import AgentSpec
from expo_robot.agent.critic import EnsembleCritic
from expo_robot.agent.lerobot_base import LerobotBase, LerobotBaseError
from expo_robot.agent.select import select

# gym_hil's layout: 18 robot values then the block's position; actions xyz + gripper
SPEC = AgentSpec(state_dim=21, action_dim=4, action_low=[-1, -1, -1, 0], action_high=[1, 1, 1, 2], chunk=4)
GYM_HIL_MAP = {"observation.state": "state[0:18]", "observation.environment_state": "state[18:21]"}


def tiny_diffusion(path, robot_dim: int = 18, n_action_steps: int = 8) -> None:
    """Save a random-weight DiffusionPolicy (state + environment state in, 4-d actions out) as lerobot does."""
    cfg = DiffusionConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (robot_dim,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        n_obs_steps=1,
        horizon=8,
        n_action_steps=n_action_steps,
        down_dims=(16, 32),
        kernel_size=3,
        n_groups=4,
        diffusion_step_embed_dim=16,
        num_train_timesteps=10,
        device="cpu",
    )
    torch.manual_seed(0)
    policy = get_policy_class("diffusion")(cfg)
    stats = {
        "observation.state": {"min": torch.full((robot_dim,), -2.0), "max": torch.full((robot_dim,), 2.0)},
        "observation.environment_state": {"min": torch.zeros(3), "max": torch.ones(3)},
        # the demonstrations used a quarter of the robot's range around 0 (gripper 0.5..1.5)
        "action": {"min": torch.tensor([-0.5, -0.5, -0.5, 0.5]), "max": torch.tensor([0.5, 0.5, 0.5, 1.5])},
    }
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    for part in (policy, pre, post):
        part.save_pretrained(path)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusion")
    tiny_diffusion(path)
    return path


def states(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(b, SPEC.state_dim)).astype(np.float32)


def test_candidates_are_distinct_chunks_inside_the_demonstrated_range(policy_dir):
    base = LerobotBase(policy_dir, SPEC, GYM_HIL_MAP)
    gen = torch.Generator().manual_seed(1)
    candidates = base.sample(states(3), n=8, generator=gen)
    assert candidates.shape == (3, 8, SPEC.chunk * SPEC.action_dim)
    assert torch.isfinite(candidates).all()
    # lerobot's postprocessor undoes its min-max normalisation: its [-1, 1] is the demonstrated range, which is
    # the middle half of this robot's bounds (gripper 0.5..1.5 of 0..2)
    assert candidates.abs().max() <= 0.5 + 1e-5
    flat = candidates.reshape(3 * 8, -1)
    assert (
        torch.cdist(flat, flat).add(torch.eye(24)).min() > 1e-3
    )  # N different noise draws: N different chunks


def test_equal_noise_gives_equal_candidates(policy_dir):
    base = LerobotBase(policy_dir, SPEC, GYM_HIL_MAP)
    noise = torch.randn(2 * 4, *base.noise_shape, generator=torch.Generator().manual_seed(3))
    a = base.sample(states(2), n=4, generator=torch.Generator().manual_seed(5), noise=noise)
    b = base.sample(states(2), n=4, generator=torch.Generator().manual_seed(5), noise=noise)
    c = base.sample(states(2), n=4, generator=torch.Generator().manual_seed(5), noise=noise + 0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_candidates_are_the_first_h_steps_of_the_policys_chunk(policy_dir):
    """Same noise, session H=4 and H=8: the H=4 candidates are the first 4 steps of the H=8 ones."""
    long_spec = AgentSpec(21, 4, SPEC.action_low, SPEC.action_high, chunk=8)
    noise = torch.randn(4, 8, 4, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed  # DDPM draws noise at every step too: the same stream for both
    short = LerobotBase(policy_dir, SPEC, GYM_HIL_MAP).sample(states(1), n=4, generator=gen(1), noise=noise)
    full = LerobotBase(policy_dir, long_spec, GYM_HIL_MAP).sample(
        states(1), n=4, generator=gen(1), noise=noise
    )
    torch.testing.assert_close(short, full[..., : 4 * 4])


def test_select_takes_the_candidates_as_proposals(policy_dir):
    base = LerobotBase(policy_dir, SPEC, GYM_HIL_MAP)
    proposals = base.sample(states(2), n=8, generator=torch.Generator().manual_seed(0))
    d = SPEC.chunk * SPEC.action_dim
    critic = EnsembleCritic(SPEC.state_dim, d, members=2, hidden=16, depth=2)
    sel = select(torch.as_tensor(states(2)), critic, torch.tensor([0, 1]), proposals=proposals)
    assert sel.action.shape == (2, d)
    assert torch.equal(sel.action, proposals[torch.arange(2), sel.index])


def test_a_mis_shaped_feature_lists_what_the_policy_expects_and_the_robot_provides(policy_dir):
    wrong = {"observation.state": "state[0:17]", "observation.environment_state": "state[18:21]"}
    with pytest.raises(LerobotBaseError) as err:
        LerobotBase(policy_dir, SPEC, wrong)
    message = str(err.value)
    assert "observation.state (18,): mapped to 'state[0:17]', which is (17,)" in message
    assert "observation.environment_state (3,)" in message and "state (21,)" in message


def test_a_missing_feature_is_named(policy_dir):
    with pytest.raises(LerobotBaseError, match=r"observation.environment_state \(3,\): no robot feature"):
        LerobotBase(policy_dir, SPEC)  # by name, state is (21,) and nothing is called environment_state


def test_a_session_chunk_longer_than_the_policys_is_refused(tmp_path):
    tiny_diffusion(tmp_path, n_action_steps=2)
    with pytest.raises(LerobotBaseError, match=r"H=4 .* n_action_steps=2"):
        LerobotBase(tmp_path, SPEC, GYM_HIL_MAP)


def test_a_folder_without_a_lerobot_policy_says_what_to_give(tmp_path):
    with pytest.raises(LerobotBaseError, match="not a lerobot policy folder"):
        LerobotBase(tmp_path, SPEC, GYM_HIL_MAP)


def lerobot_expo(policy_dir, spec=SPEC):
    from agent_fixtures import agent_cfg

    from expo_robot.agent import make_agent

    base = {"kind": "lerobot", "path": str(policy_dir), "observation_map": GYM_HIL_MAP}
    select_cfg = {"proposal_steps": None}  # a lerobot policy denoises with its own steps
    return make_agent(agent_cfg("expo", base=base, select=select_cfg), spec, device="cpu", seed=0)


def test_an_expo_agent_acts_and_learns_with_a_frozen_lerobot_base(policy_dir):
    from agent_fixtures import random_buffer

    agent = lerobot_expo(policy_dir)
    offline, online = random_buffer(64, 0, SPEC), random_buffer(64, 1, SPEC)
    metrics = agent.update(offline, online)  # fits the normaliser, critic + edit steps, no base step
    assert "critic/loss" in metrics and "base/loss" not in metrics
    s = agent.otf(agent.obs_tensor(states(2)), acting=True)
    n = agent.cfg["select"]["n_act"]
    # the base's proposals are the adapter's candidates for the same state (env units) and the same noise stream
    gen = torch.Generator().manual_seed(7)
    agent.gen.manual_seed(7)
    again = agent.base.sample(agent.obs_tensor(states(2)), n, None, agent.gen)
    direct = agent.base.base.sample(states(2), None, n, gen)
    torch.testing.assert_close(again, direct, atol=1e-5, rtol=0)
    assert s.candidates.shape == (2, 2 * n, SPEC.chunk * SPEC.action_dim)
    chunk = agent.act(states(1)[0])
    assert chunk.shape == (SPEC.chunk, SPEC.action_dim)
    assert np.all(chunk >= SPEC.action_low) and np.all(chunk <= SPEC.action_high)
    # weight sync: the edit policy and critic travel, the frozen base does not (each process loads its folder)
    acting = agent.acting_state()
    assert any(k.startswith("edit.") for k in acting) and not any(k.startswith("base") for k in acting)
    other = lerobot_expo(policy_dir)
    other.load_acting_state(acting)
    torch.testing.assert_close(other.critic_target.state_dict(), agent.critic_target.state_dict())


def test_fewer_proposal_steps_are_refused_at_start(policy_dir):
    from agent_fixtures import agent_cfg

    from expo_robot.agent import make_agent

    base = {"kind": "lerobot", "path": str(policy_dir), "observation_map": GYM_HIL_MAP}
    with pytest.raises(ValueError, match="proposal_steps=null"):
        make_agent(agent_cfg("expo", base=base, select={"proposal_steps": 4}), SPEC, device="cpu")


def test_a_lerobot_base_is_not_pretrained_here(policy_dir):
    """lerobot trained it: the session's pretraining steps are skipped (the default 3000 must not stop a session)."""
    from agent_fixtures import random_buffer

    agent = lerobot_expo(policy_dir)
    before = agent.base.sample(agent.obs_tensor(states(1)), 2, None, torch.Generator().manual_seed(0))
    assert agent.pretrain(random_buffer(16, 0, SPEC), steps=10) == {"pretrain/steps": 0}
    assert agent.counters["pretrain_steps"] == 0
    after = agent.base.sample(agent.obs_tensor(states(1)), 2, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_the_observation_map_reads_from_yaml_or_the_command_line():
    from expo_robot.agent.lerobot_base import parse_observation_map

    as_list = ["observation.state=state[0:18]", "observation.environment_state=state[18:21]"]
    assert parse_observation_map(as_list) == GYM_HIL_MAP == parse_observation_map(GYM_HIL_MAP)
    assert parse_observation_map(None) == {}
    with pytest.raises(LerobotBaseError, match="feature=source"):
        parse_observation_map(["observation.state"])
