"""Per-step episode data -> chunk transitions (Q-chunking): one function for the actor and the offline loader.

A chunk transition starting at step t covers h = min(H, T - t) executed steps:
reward = sum_{i<h} gamma^i r_{t+i}, next_obs = s_{t+h}, discount = gamma^h (0 when the episode terminated there).
A truncated chunk (h < H, at the end of an episode) pads its action chunk with its last executed action, and
bootstraps with gamma^h from s_{t+h}, unless the episode terminated.
"""

from __future__ import annotations

import numpy as np


class ChunkingError(ValueError):
    """Episode arrays with inconsistent lengths or an invalid chunk/stride."""


def chunk_transitions(
    states: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: bool,
    chunk: int,
    gamma: float,
    stride: int | None = None,
    interventions: np.ndarray | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """states [T+1, S] (incl. the final state), actions [T, A], rewards [T]; `terminated`: the episode ended in a
    terminal state (success or failure) rather than a time limit. Chunks start every `stride` steps (default H:
    the chunks an actor executes; 1 gives every start, more data from the same demonstrations).

    Returns the ReplayBuffer fields: obs [N, S], actions [N, H, A], reward [N], next_obs [N, S], discount [N],
    steps [N] (h), intervention [N] (any step of the chunk was an operator intervention). `images` (camera name ->
    uint8 [T+1, H, W, C], like states) add obs_image.<name> and next_obs_image.<name>.
    """
    states, actions = np.asarray(states, np.float32), np.asarray(actions, np.float32)
    rewards = np.asarray(rewards, np.float64)
    t_len = actions.shape[0]
    if states.shape[0] != t_len + 1 or rewards.shape[0] != t_len:
        raise ChunkingError(
            f"need states[T+1], actions[T], rewards[T]; got {states.shape[0]}, {t_len}, {rewards.shape[0]}"
        )
    stride = stride or chunk
    if chunk < 1 or stride < 1:
        raise ChunkingError(f"chunk and stride must be >= 1 (got {chunk}, {stride})")
    flags = np.zeros(t_len, bool) if interventions is None else np.asarray(interventions, bool)
    starts = np.arange(0, t_len, stride)
    n = len(starts)
    out = {
        "obs": states[starts],
        "actions": np.empty((n, chunk, actions.shape[1]), np.float32),
        "reward": np.empty(n, np.float32),
        "next_obs": np.empty((n, states.shape[1]), np.float32),
        "discount": np.empty(n, np.float32),
        "steps": np.empty(n, np.int64),
        "intervention": np.empty(n, bool),
    }
    for i, t in enumerate(starts):
        h = min(chunk, t_len - t)
        out["actions"][i, :h] = actions[t : t + h]
        out["actions"][i, h:] = actions[t + h - 1]  # truncated chunk: pad with its last executed action
        out["reward"][i] = np.sum(rewards[t : t + h] * gamma ** np.arange(h))
        out["next_obs"][i] = states[t + h]
        ends_terminal = terminated and t + h == t_len
        out["discount"][i] = 0.0 if ends_terminal else gamma**h
        out["steps"][i] = h
        out["intervention"][i] = flags[t : t + h].any()
    for name, frames in (images or {}).items():
        if len(frames) != t_len + 1:
            raise ChunkingError(f"camera '{name}' has {len(frames)} frames for {t_len + 1} states")
        out[f"obs_image.{name}"] = frames[starts]
        out[f"next_obs_image.{name}"] = frames[starts + out["steps"]]
    return out


def episode_chunks(
    episode, chunk: int, gamma: float, stride: int | None = None
) -> dict[str, np.ndarray] | None:
    """Chunk transitions of a recorded episode (expo_robot.data.dataset_io.Episode: states[T] without the final state).

    A terminated episode needs no state after its last action (no bootstrap), so the last state stands in for it;
    a truncated one drops its last action, whose next state was not recorded. None if nothing is left.
    """
    states, actions, rewards = episode.states, episode.actions, episode.rewards
    images = dict(getattr(episode, "images", None) or {})
    if episode.terminated:
        states = np.concatenate([states, states[-1:]])
        images = {k: np.concatenate([v, v[-1:]]) for k, v in images.items()}
    else:
        actions, rewards = actions[:-1], rewards[:-1]
    if len(actions) == 0:
        return None
    flags = np.asarray(episode.intervention, bool)[: len(actions)]
    return chunk_transitions(
        states, actions, rewards, episode.terminated, chunk, gamma, stride, flags, images or None
    )
