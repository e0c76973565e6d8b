"""Chunk transitions: discounted rewards over executed steps, truncated chunks, terminal vs time-limit ends."""

import numpy as np
import pytest

from expo_robot.data.chunking import ChunkingError, chunk_transitions, episode_chunks

GAMMA = 0.9


def episode(t_len: int, s_dim: int = 2, a_dim: int = 1):
    states = np.arange((t_len + 1) * s_dim, dtype=np.float32).reshape(t_len + 1, s_dim)
    actions = np.arange(t_len * a_dim, dtype=np.float32).reshape(t_len, a_dim)
    rewards = np.arange(1, t_len + 1, dtype=np.float32)  # r_t = t + 1, all distinct
    return states, actions, rewards


def test_full_and_truncated_chunks_discount_over_executed_steps():
    states, actions, rewards = episode(7)
    out = chunk_transitions(states, actions, rewards, terminated=True, chunk=3, gamma=GAMMA)
    assert out["steps"].tolist() == [3, 3, 1]
    # first chunk: r0 + g r1 + g^2 r2 = 1 + 0.9*2 + 0.81*3
    np.testing.assert_allclose(out["reward"], [1 + 0.9 * 2 + 0.81 * 3, 4 + 0.9 * 5 + 0.81 * 6, 7], rtol=1e-6)
    np.testing.assert_array_equal(out["next_obs"], states[[3, 6, 7]])
    np.testing.assert_array_equal(out["obs"], states[[0, 3, 6]])
    # the last chunk ends the episode in a terminal state: no bootstrap
    np.testing.assert_allclose(out["discount"], [GAMMA**3, GAMMA**3, 0.0], rtol=1e-6)
    # truncated chunk padded with its last executed action
    np.testing.assert_array_equal(out["actions"][2, :, 0], [6, 6, 6])


def test_time_limit_end_bootstraps_with_gamma_h():
    states, actions, rewards = episode(5)
    out = chunk_transitions(states, actions, rewards, terminated=False, chunk=4, gamma=GAMMA)
    assert out["steps"].tolist() == [4, 1]
    np.testing.assert_allclose(out["discount"], [GAMMA**4, GAMMA**1], rtol=1e-6)
    np.testing.assert_allclose(out["reward"][1], 5.0)


def test_stride_one_and_interventions():
    states, actions, rewards = episode(4)
    flags = np.array([False, False, True, False])
    out = chunk_transitions(
        states, actions, rewards, False, chunk=2, gamma=GAMMA, stride=1, interventions=flags
    )
    assert out["steps"].tolist() == [2, 2, 2, 1]
    assert out["intervention"].tolist() == [False, True, True, False]
    np.testing.assert_allclose(out["reward"][2], 3 + GAMMA * 4, rtol=1e-6)


def test_length_mismatch_is_a_clear_error():
    states, actions, rewards = episode(4)
    with pytest.raises(ChunkingError, match=r"states\[T\+1\]"):
        chunk_transitions(states[:-1], actions, rewards, True, 2, GAMMA)


def test_recorded_episodes_terminated_and_truncated():
    """Episodes as the LeRobotDataset reader gives them (no final state): a truncated one drops its last action."""
    from types import SimpleNamespace

    states, actions, rewards = episode(5)
    rec = SimpleNamespace(states=states[:5], actions=actions, rewards=rewards, terminated=True,
                          intervention=np.zeros(5, bool))  # fmt: skip
    out = episode_chunks(rec, chunk=2, gamma=GAMMA)
    assert out["steps"].tolist() == [2, 2, 1] and out["discount"][-1] == 0.0
    rec.terminated = False
    out = episode_chunks(rec, chunk=2, gamma=GAMMA)
    assert out["steps"].tolist() == [2, 2]  # 4 complete transitions left
    np.testing.assert_array_equal(out["next_obs"][-1], states[4])
    np.testing.assert_allclose(out["discount"], [GAMMA**2, GAMMA**2], rtol=1e-6)
