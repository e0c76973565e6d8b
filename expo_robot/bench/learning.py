"""`expo-robot bench learning [quick|full]`: EXPO against its baselines on the same seed data, simulator and budget.

In-process (SimTask, no sockets). Per algorithm and seed: load the scripted-operator seed dataset, pretrain (imitation
for the base; RLPD only fits its normaliser), then learn online for `env_steps` simulator steps with one `update()`
per executed chunk, evaluating success every `eval_every` steps (fixed evaluation seeds, shared by all algorithms)
and on `final_episodes` episodes at the end. Settings can be overridden: `+bench.env_steps=2000 +bench.seeds=[0,1]`
`+bench.algorithms=[expo,expo_exact_backup] +bench.plot_name=learning_ablations.png`; `+bench.result_name=NAME` writes
benchmarks/results/NAME.json instead of learning.json (a partial run beside the headline one).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from drivers.cameras import configured_shapes
from drivers.sim_env import RenderProfile, make_sim_task
from expo_robot.agent import AgentSpec, agent_params, make_agent
from expo_robot.agent.encoder import agent_image_shapes, resize_frames
from expo_robot.agent.proposal_cache import ProposalCache
from expo_robot.config import load_config, setup_logging
from expo_robot.data.chunking import chunk_transitions
from expo_robot.data.replay import ReplayBuffer, sample_symmetric

log = logging.getLogger(__name__)

PROFILES = {
    # 1 seed, the headline comparison: fits ~20 minutes on the 2-core CPU.
    "quick": {
        "algorithms": ["expo", "rlpd", "bc"], "seeds": [0], "env_steps": 4000, "eval_every": 1000,
        "eval_episodes": 10, "final_episodes": 50, "pretrain_steps": 3000, "seed_episodes": 50,
    },
    # 3 seeds, plus the two paper ablations and EXPO with the amortised (cheaper, approximate) backup.
    "full": {
        "algorithms": ["expo", "rlpd", "bc", "best_of_n", "expo_no_otf_backup", "expo_amortised_backup"],
        "seeds": [0, 1, 2], "env_steps": 4000, "eval_every": 1000, "eval_episodes": 10, "final_episodes": 50,
        "pretrain_steps": 3000, "seed_episodes": 50,
    },
    # From cameras (run with cameras=sim_pair: front + wrist): EXPO against BC, 1 seed, frames at 64x64, the 50
    # seed episodes' frames rendered once and cached (data/seed). The CPU profile's encoder. Sized to finish in about
    # an hour on the shared 2-core CPU; raise env_steps / pretrain_steps where there is more.
    "images": {
        "algorithms": ["expo", "bc"], "seeds": [0], "env_steps": 1000, "eval_every": 1000, "eval_episodes": 10,
        "final_episodes": 50, "pretrain_steps": 1000, "seed_episodes": 50, "image_size": [64, 64],
        "needs_cameras": True,
    },
    # seconds, for tests of this module
    "smoke": {
        "algorithms": ["expo", "rlpd", "bc"], "seeds": [0], "env_steps": 24, "eval_every": 12,
        "eval_episodes": 1, "final_episodes": 2, "pretrain_steps": 5, "seed_episodes": 2, "max_episode_steps": 12,
    },
}  # fmt: skip
# Benchmark-only variants: an agent config with overrides merged into its active profile.
VARIANTS = {
    "expo_exact_backup": (
        "expo",
        {"select": {"n_backup": 8, "proposal_steps": None, "proposal_cache_age": 0}},
    ),
    "expo_amortised_backup": (
        "expo",
        {"select": {"n_backup": 4, "proposal_steps": 4, "proposal_cache_age": 0}},
    ),
    # half the Euler steps, acting and in the backup: half the base's cost in a policy step
    "expo_5_euler_steps": ("expo", {"base": {"steps": 5}}),
    # the backup's proposals from a one-step sampler distilled from the base (the base still acts)
    "expo_distilled_backup": ("expo", {"select": {"backup_sampler": "distilled"}}),
}
EVAL_SEED = 1_000_000  # evaluation episodes use seeds EVAL_SEED + i: the same cubes for every algorithm


class BenchConfigError(ValueError):
    """Unknown benchmark profile or algorithm."""


def bench_settings(cfg: DictConfig, words: list[str]) -> dict:
    name = words[0] if words else "quick"
    if name not in PROFILES:
        raise BenchConfigError(
            f"unknown learning benchmark profile '{name}'; choose one of {', '.join(PROFILES)}"
        )
    settings = dict(PROFILES[name], profile=name)
    settings |= OmegaConf.to_container(cfg.get("bench") or OmegaConf.create({}), resolve=True)
    return settings


def agent_config(name: str, profile: str, settings: dict | None = None) -> dict:
    base_name, overrides = VARIANTS.get(name, (name, {}))
    agent_cfg = load_config([f"agent={base_name}", f"profile={profile}"]).agent
    params = agent_params(agent_cfg, profile)
    if (settings or {}).get("image_size"):  # the benchmark's frame size for the agent
        overrides = OmegaConf.merge(overrides, {"encoder": {"image_size": list(settings["image_size"])}})
    return OmegaConf.to_container(OmegaConf.merge(params, overrides), resolve=True)


def load_offline(cfg: DictConfig, settings: dict, spec: AgentSpec, gamma: float):
    """Seed episodes (scripted noisy operator, cached LeRobotDataset) as chunk transitions, every start (stride 1),
    with the configured cameras' frames (resized to the agent's) when there are cameras."""
    from expo_robot.data.seed import ensure_seed_dataset
    from expo_robot.runtime.offline import load_offline_transitions

    root = settings.get("seed_root", "data/seed")
    cameras = list((cfg.get("cameras") or {}).get("list") or [])
    path = ensure_seed_dataset(
        cfg.robot, cfg.task, settings["seed_episodes"], None, seed=0, root=root, cameras=cameras
    )
    shapes = configured_shapes(cfg.get("cameras")) or None
    batch, summary = load_offline_transitions([path], spec.chunk, gamma, shapes, dict(spec.images) or None)
    buf = ReplayBuffer(
        len(batch["obs"]), spec.state_dim, spec.chunk, spec.action_dim, images=dict(spec.images)
    )
    buf.add_batch(batch)
    info = {"path": str(path), "episodes": summary["episodes"], "success_rate": summary["success_rate"]}
    return buf, info


class Cameras:
    """The configured simulated cameras, rendered at each decision and resized to the agent's frame size."""

    def __init__(self, cameras_cfg, agent_shapes: dict):
        self.list = list((cameras_cfg or {}).get("list") or [])
        self.shapes = agent_shapes

    def frames(self, task) -> dict[str, np.ndarray] | None:
        if not self.list:
            return None
        return {
            c["name"]: resize_frames(
                task.render(c.get("camera"), int(c["height"]), int(c["width"])), self.shapes[c["name"]]
            )
            for c in self.list
        }


def evaluate(agent, task, episodes: int, max_steps: int, cameras: Cameras | None = None) -> float:
    successes = 0
    for i in range(episodes):
        state, t, success, done = task.reset(EVAL_SEED + i), 0, False, False
        while not done:
            images = cameras.frames(task) if cameras else None
            for action in agent.act(state, "eval", images):
                r = task.step(action)
                state, t, success = r.state, t + 1, r.success
                done = r.terminated or r.truncated or t >= max_steps
                if done:
                    break
        successes += int(success)
    return successes / max(episodes, 1)


class OnlineRun:
    """Acting, storing chunk transitions and learning for one (algorithm, seed), with its own timers."""

    def __init__(
        self,
        agent,
        params: dict,
        task,
        offline: ReplayBuffer,
        online: ReplayBuffer,
        learn: bool,
        cameras: Cameras,
    ):
        self.agent, self.params, self.task, self.cameras = agent, params, task, cameras
        self.offline, self.online, self.learn = offline, online, learn
        self.env_steps = 0
        self.timers = {"env": 0.0, "act": 0.0, "update": 0.0, "render": 0.0}
        self.updates = 0
        self.episodes = 0
        self.last_metrics: dict = {}

    def episode(self, seed: int, max_steps: int, stop_at: int) -> None:
        """One training episode (cut at `stop_at` env steps); one update per executed chunk."""
        state, t, done = self.task.reset(seed), 0, False
        images = self.cameras.frames(self.task)
        while not done and self.env_steps < stop_at:
            t0 = time.perf_counter()
            chunk = self.agent.act(state, "explore", images)
            self.timers["act"] += time.perf_counter() - t0
            states, actions, rewards, terminated = [state], [], [], False
            t0 = time.perf_counter()
            for action in chunk:
                r = self.task.step(action)
                t, self.env_steps = t + 1, self.env_steps + 1
                states.append(r.state)
                actions.append(action)
                rewards.append(r.reward)
                terminated = r.terminated
                done = r.terminated or r.truncated or t >= max_steps
                if done or self.env_steps >= stop_at:
                    break
            t1 = time.perf_counter()
            self.timers["env"] += t1 - t0
            state, first_images, images = states[-1], images, self.cameras.frames(self.task)
            self.timers["render"] += time.perf_counter() - t1
            # a chunk transition reads only its first and its next state's frames: the steps between are not drawn
            chunk_images = {
                k: np.stack([v] * len(actions) + [images[k]]) for k, v in (first_images or {}).items()
            }
            self.online.add_batch(
                chunk_transitions(
                    np.stack(states), np.stack(actions), np.asarray(rewards), terminated,
                    self.agent.spec.chunk, self.params["gamma"], images=chunk_images or None,
                )
            )  # fmt: skip
            if self.learn:
                t0 = time.perf_counter()
                self.last_metrics = self.agent.update(self.offline, self.online)
                self.timers["update"] += time.perf_counter() - t0
                self.updates += 1
        self.episodes += 1


def backup_costs(agent, params: dict, spec, device, offline, online, reps: int = 8) -> dict:
    """Time one critic step with the exact OTF backup and with each amortisation, on copies of the trained agent."""
    base_steps = params["base"]["steps"]
    n_act = params["select"]["n_act"]
    cheap_n, cheap_steps = max(1, n_act // 2), max(1, min(4, base_steps))  # the amortised settings compared
    options = {
        "exact": {"n_backup": n_act, "proposal_steps": None, "proposal_cache_age": 0},
        "fewer_proposal_steps": {"n_backup": n_act, "proposal_steps": cheap_steps, "proposal_cache_age": 0},
        "fewer_backup_candidates": {"n_backup": cheap_n, "proposal_steps": None, "proposal_cache_age": 0},
        "both": {"n_backup": cheap_n, "proposal_steps": cheap_steps, "proposal_cache_age": 0},
        "both+proposal_cache": {"n_backup": cheap_n, "proposal_steps": cheap_steps, "proposal_cache_age": 20},
        # a one-step proposer distilled from the base (its distillation step's share per critic step included)
        "distilled_one_step": {"n_backup": n_act, "backup_sampler": "distilled", "proposal_cache_age": 0},
        "distilled_one_step+fewer_candidates": {
            "n_backup": cheap_n,
            "backup_sampler": "distilled",
            "proposal_cache_age": 0,
        },
        "profile_default": {},
    }
    if params["base"]["kind"] != "flow":  # a DDPM base cannot sample with fewer steps
        options = {
            k: v for k, v in options.items() if v.get("proposal_steps") is None and "backup_sampler" not in v
        }
    state = agent.state_dict()
    probes = {name: _backup_probe(agent, state, params, over, spec, device, offline, online)
              for name, over in options.items()}  # fmt: skip
    for probe in probes.values():  # warm-up: traced graphs, and the cache's first fills
        for _ in range(2 + 20 * bool(probe.cache)):
            _timed_critic_step(probe, params, offline, online)
    times: dict[str, list[float]] = {name: [] for name in probes}
    names = list(probes)
    for r in range(reps):  # in turns, the order rotating: a shared machine's load hits every option alike
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_timed_critic_step(probes[name], params, offline, online))
    out = {}
    for name, probe in probes.items():
        s = probe.cfg["select"]
        out[name] = {
            "n_backup": s["n_backup"],
            "proposal_steps": 1 if probe.proposer is not None else s.get("proposal_steps") or base_steps,
            "proposal_cache_age": s.get("proposal_cache_age", 0),
            "critic_step_ms": round(1e3 * float(np.median(times[name])), 2),
        }
        if probe.cache is not None:
            out[name]["cache_hit_rate"] = round(probe.cache.hit_rate(), 3)
    exact = out["exact"]["critic_step_ms"]
    for v in out.values():
        v["cost_ratio_vs_exact"] = round(v["critic_step_ms"] / exact, 3)
    return out


def _base_modules(agent) -> tuple[str, ...]:
    """What imitation pretraining trains: the normaliser, the base (+ EMA) and the image encoder the base sees."""
    encoder = next((k for k in ("encoder", "encoder_base") if k in agent.modules), None)
    return ("norm", "base", "base_ema", *((encoder,) if encoder else ()))


def _backup_probe(agent, state: dict, params: dict, over: dict, spec, device, offline, online):
    """A copy of the trained agent with other backup settings (a distilled proposer starts from its base)."""
    probe_params = copy.deepcopy(params)
    probe_params["select"] |= over
    probe = type(agent)(probe_params, spec, device, 0)
    if probe.proposer is not None:  # a module the trained agent lacks: its own, started from the base
        own = {"modules": state["modules"] | {"proposer": probe.proposer.state_dict()},
               "optims": state["optims"] | {"proposer": probe.optims["proposer"].state_dict()}}  # fmt: skip
        probe.load_state_dict(state | own)
        probe.proposer.net.load_state_dict(probe.base.net.state_dict())
    else:
        probe.load_state_dict(state)
    s = probe.cfg["select"]
    if s.get("proposal_cache_age", 0) > 0:
        probe.cache = ProposalCache(s["proposal_cache_age"], s["n_backup"], probe.act_dim, probe.device)
    probe._capacities = {0: offline.capacity, 1: online.capacity}
    return probe


def _timed_critic_step(probe, params: dict, offline, online) -> float:
    """Seconds for one critic step with the probe's backup (with a distilled proposer, its distillation step's
    share: one per update of UTD critic steps)."""
    batch = sample_symmetric(offline, online, params["batch_size"], probe.rng)
    t0 = time.perf_counter()
    t = probe.tensors(batch)
    probe.critic_step(t, batch)
    elapsed = time.perf_counter() - t0
    if probe.proposer is not None:
        t1 = time.perf_counter()
        probe.distill_step(t["next_obs"])
        elapsed += (time.perf_counter() - t1) / params["utd"]
    probe.counters["updates"] += 1
    return elapsed


def run_one(cfg, settings, name: str, seed: int, offline, spec, pretrained: dict) -> dict:
    params = agent_config(name, cfg.profile, settings)
    torch.manual_seed(seed)
    agent = make_agent(params, spec, device=cfg.device, seed=seed, profile=params["profile"])
    learn = name != "bc"
    t0 = time.perf_counter()
    key = json.dumps({k: params.get(k) for k in ("base", "pretrain", "encoder")}, sort_keys=True) + f"/{seed}"
    if hasattr(agent, "base") and key in pretrained:  # same base config and seed: reuse the imitation run
        for k, sd in zip(_base_modules(agent), pretrained[key]):
            agent.modules[k].load_state_dict(sd)
    else:
        agent.pretrain(offline, settings["pretrain_steps"])
        if hasattr(agent, "base"):  # (BC's one encoder and EXPO's base encoder are the same network)
            pretrained[key] = [copy.deepcopy(agent.modules[k].state_dict()) for k in _base_modules(agent)]
    pretrain_s = time.perf_counter() - t0
    max_steps = int(settings.get("max_episode_steps") or cfg.task.max_episode_steps)
    train_task = make_sim_task(cfg.robot, OmegaConf.merge(cfg.task, {"max_episode_steps": max_steps}))
    eval_task = make_sim_task(cfg.robot, OmegaConf.merge(cfg.task, {"max_episode_steps": max_steps}))
    online = ReplayBuffer(
        settings["env_steps"] + 16, spec.state_dim, spec.chunk, spec.action_dim, images=dict(spec.images)
    )
    cameras = Cameras(cfg.get("cameras"), dict(spec.images))
    run = OnlineRun(agent, params, train_task, offline, online, learn, cameras)
    curve = []
    try:
        t_start = time.perf_counter()
        eval_s = 0.0
        for target in range(0, settings["env_steps"] + 1, settings["eval_every"]):
            while run.env_steps < target:
                run.episode(seed * 100_000 + run.episodes, max_steps, target)
            if learn or target in (0, settings["env_steps"]):  # BC does not change online: evaluate the ends
                is_final = target == settings["env_steps"]
                te = time.perf_counter()
                n_eval = settings["final_episodes"] if is_final else settings["eval_episodes"]
                success = evaluate(agent, eval_task, n_eval, max_steps, cameras)
                eval_s += time.perf_counter() - te
                curve.append([run.env_steps, success])
                log.info("%s seed %d: %d env steps, success %.2f (%d episodes)", name, seed, run.env_steps,
                         success, n_eval)  # fmt: skip
        online_s = time.perf_counter() - t_start - eval_s
        costs = None
        if name == "expo" and not spec.images:  # (the probes' critic steps read no frames)
            costs = backup_costs(agent, params, spec, cfg.device, offline, online)
    finally:
        train_task.close()
        eval_task.close()
    timers = run.timers
    return {
        "curve": curve,
        "final_success": curve[-1][1],
        "final_episodes": settings["final_episodes"],
        "steps_to_0.8": next((s for s, v in curve if v >= 0.8), None),
        "speed": {
            "learner_updates_per_s": round(run.updates / timers["update"], 2) if run.updates else None,
            "env_steps_per_s": round(run.env_steps / max(online_s, 1e-9), 1),
            "sim_steps_per_s": round(run.env_steps / max(timers["env"], 1e-9), 1),
            "act_ms": round(1e3 * timers["act"] / max(1, run.env_steps / spec.chunk), 2),
            "render_s": round(timers["render"], 1),
            "render_ms_per_frame": round(train_task.render_times.summary()["render_ms"], 1),
            "pretrain_s": round(pretrain_s, 1),
            "online_s": round(online_s, 1),
            "eval_s": round(eval_s, 1),
        },
        "updates": run.updates,
        "last_metrics": {k: round(float(v), 4) for k, v in run.last_metrics.items()},
        "backup_costs": costs,
    }


def summarize(results: dict) -> dict:
    summary = {}
    for name, per_seed in results.items():
        finals = [r["final_success"] for r in per_seed.values()]
        reached = [r["steps_to_0.8"] for r in per_seed.values()]
        speeds = [r["speed"] for r in per_seed.values()]
        summary[name] = {
            "final_success": float(np.median(finals)),
            # median over seeds, counting "never" as infinitely late; null if most seeds never got there
            "steps_to_0.8": (
                float(np.median([np.inf if s is None else s for s in reached]))
                if sum(s is not None for s in reached) * 2 > len(reached)
                else None
            ),
            "learner_updates_per_s": speeds[0]["learner_updates_per_s"],
            "env_steps_per_s": float(np.median([s["env_steps_per_s"] for s in speeds])),
        }
    return summary


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, per_seed in results.items():
        curves = [np.asarray(r["curve"], float) for r in per_seed.values()]
        n = min(len(c) for c in curves)
        x = curves[0][:n, 0]
        ys = np.stack([c[:n, 1] for c in curves])
        (line,) = ax.plot(x, np.median(ys, 0), marker="o", label=f"{name} ({len(curves)} seed(s))")
        ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    ax.axhline(0.8, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="online env steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DictConfig, words: list[str], results_dir: Path = Path("benchmarks/results")) -> dict:
    settings = bench_settings(cfg, words)
    torch.set_num_threads(int(settings.get("threads", 1)))  # the machine is shared
    if not logging.getLogger().handlers:
        setup_logging(None, cfg.get("log_level", "INFO"))
    unknown = [
        a
        for a in settings["algorithms"]
        if a not in VARIANTS
        and a not in ("expo", "rlpd", "rlpd_step", "bc", "best_of_n", "expo_no_otf_backup")
    ]
    if unknown:
        raise BenchConfigError(f"unknown algorithms {unknown}")
    cameras = configured_shapes(cfg.get("cameras"))
    if settings.get("needs_cameras") and not cameras:
        raise BenchConfigError(
            f"the {settings['profile']} profile learns from cameras: add cameras=sim_pair (front + wrist)"
        )
    first = agent_config(settings["algorithms"][0], cfg.profile, settings)
    probe = make_sim_task(cfg.robot, cfg.task)
    images = agent_image_shapes(cameras, (first.get("encoder") or {}).get("image_size")) if cameras else {}
    dims = (probe.state_dim, probe.action_dim, probe.action_low, probe.action_high)
    probe.close()
    by_chunk: dict[
        int, tuple
    ] = {}  # H -> (spec, offline chunk transitions): rlpd_step (H=1) beside H=4 methods

    def data_for(chunk: int) -> tuple:
        if chunk not in by_chunk:
            spec = AgentSpec(*dims, chunk, images=images)
            t0 = time.perf_counter()
            offline, info = load_offline(cfg, settings, spec, first["gamma"])
            info["seconds"] = round(time.perf_counter() - t0, 1)
            by_chunk[chunk] = (spec, offline, info)
        return by_chunk[chunk]

    _, _, seed_info = data_for(first["chunk"])
    results: dict[str, dict] = {}
    pretrained: dict = {}
    for name in settings["algorithms"]:
        spec, offline, _ = data_for(agent_config(name, cfg.profile, settings)["chunk"])
        for seed in settings["seeds"]:
            log.info("learning benchmark: %s seed %d", name, seed)
            results.setdefault(name, {})[str(seed)] = run_one(
                cfg, settings, name, seed, offline, spec, pretrained
            )
    summary = summarize(results)
    expo_costs = [r["backup_costs"] for r in results.get("expo", {}).values() if r["backup_costs"]]
    default_png = "learning.png" if settings["profile"] != "smoke" else "learning_smoke.png"
    png = results_dir / settings.get("plot_name", default_png)
    plot(results, png, f"{cfg.robot.env_id}, profile={cfg.profile}, bench={settings['profile']}")
    for name, s in summary.items():
        log.info("%-20s final %.2f  steps_to_0.8 %s  updates/s %s  env steps/s %.1f", name, s["final_success"],
                 s["steps_to_0.8"], s["learner_updates_per_s"], s["env_steps_per_s"])  # fmt: skip
    named = {"result_name": settings["result_name"]} if settings.get("result_name") else {}
    return {
        **named,
        "benchmark": "learning",
        "bench_profile": settings["profile"],
        "agent_profile": cfg.profile,
        "task": {"env_id": cfg.robot.env_id, "task": cfg.task.name},
        "settings": settings,
        "seed_data": seed_info,
        "cameras": OmegaConf.to_container(cfg.cameras, resolve=True) if cameras else None,
        "render_profile": RenderProfile.from_config(cfg.robot.get("render")).settings() if cameras else None,
        "agents": {name: agent_config(name, cfg.profile, settings) for name in settings["algorithms"]},
        "results": results,
        "backup_costs": expo_costs[0] if expo_costs else None,
        "plot": str(png),
        "summary": summary,
    }
