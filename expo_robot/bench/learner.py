"""`expo-robot bench learner [full|quick|profile]`: what one EXPO update costs, eager path against fast path.

full (learner.json): per agent profile (cpu, reference) on this machine's device, the eager update
(`agent.fast=false`, the reference) and the fast one (`agent.fast=true`, without and with torch.compile) are timed
ALTERNATELY in one run (the machine is shared: only ratios measured side by side mean anything), on synthetic replay
data of the default robot's sizes: full-update ms, updates/s, critic-step ms, their ratio to eager; the compile time;
and the backup options' cost against the exact OTF backup. quick: the cpu profile only (learner_quick.json).
profile (learner_profile.json + learner_profile.txt): where an eager update's time goes, section by section, and the
operator tables of torch's profiler for both paths.
Settings: `+bench.reps=N +bench.profiles=[cpu] +bench.compile=false +bench.backup_costs=false +bench.threads=1`.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from expo_robot.agent import AgentSpec, agent_params, make_agent, resolve_device
from expo_robot.agent.critic import soft_update
from expo_robot.agent.fast_update import symmetric_indices
from expo_robot.agent.nets import grad_norm
from expo_robot.agent.select import select
from expo_robot.bench.learning import backup_costs
from expo_robot.config import load_config, setup_logging
from expo_robot.data.replay import ReplayBuffer

log = logging.getLogger(__name__)

STATE_DIM = 21  # the default robot (gym-hil Panda): 18 robot values + 3 cube position
PROFILES = {
    # reps per variant and agent profile; compile and the backup options only where their minutes pay (one
    # reference-sized update takes minutes on a loaded CPU core)
    "full": {
        "profiles": ["cpu", "reference"],
        "reps": {"cpu": 12, "reference": 1},
        "compile": ["cpu"],
        "backup_costs": ["cpu"],
    },
    "quick": {
        "profiles": ["cpu"],
        "reps": {"cpu": 6},
        "compile": ["cpu"],
        "backup_costs": ["cpu"],
        "result_name": "learner_quick",
    },
    "profile": {"profiles": ["cpu"], "reps": {"cpu": 8}, "compile": [], "result_name": "learner_profile"},
}


class BenchLearnerError(ValueError):
    """Unknown benchmark profile."""


def settings_for(cfg: DictConfig, words: list[str]) -> dict:
    name = words[0] if words else "full"
    if name not in PROFILES:
        raise BenchLearnerError(f"unknown learner benchmark '{name}'; choose one of {', '.join(PROFILES)}")
    s = copy.deepcopy(PROFILES[name]) | {"name": name}
    over = OmegaConf.to_container(cfg.get("bench") or OmegaConf.create({}), resolve=True)
    if "reps" in over:
        over["reps"] = dict.fromkeys(over.get("profiles", s["profiles"]), int(over["reps"]))
    for key in ("compile", "backup_costs"):  # false: for no profile
        if over.get(key) is False:
            over[key] = []
    return s | over


def spec_for(cfg: DictConfig, params: dict) -> AgentSpec:
    return AgentSpec(
        STATE_DIM, len(cfg.robot.action_low), cfg.robot.action_low, cfg.robot.action_high, params["chunk"]
    )


def synthetic_buffer(spec: AgentSpec, n: int = 4096, seed: int = 0) -> ReplayBuffer:
    """Random transitions of the robot's sizes: an update's cost does not depend on what the numbers are."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(n, spec.state_dim, spec.chunk, spec.action_dim)
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
    buf.add_batch({
        "obs": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
        "actions": rng.uniform(low, high, size=(n, spec.chunk, spec.action_dim)).astype(np.float32),
        "reward": rng.integers(0, 2, n).astype(np.float32),
        "next_obs": rng.normal(size=(n, spec.state_dim)).astype(np.float32),
        "discount": np.full(n, 0.99**spec.chunk, np.float32),
        "steps": np.full(n, spec.chunk),
    })  # fmt: skip
    return buf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_update(agent, offline, online) -> float:
    """Seconds for one update, metrics read (what a caller that logs them pays)."""
    t0 = time.perf_counter()
    metrics = agent.update(offline, online)
    {k: float(v) for k, v in metrics.items()}
    _sync(agent.device)
    return time.perf_counter() - t0


def critic_step_ms(agent, buf, reps: int) -> float:
    """One critic step with its exact OTF backup. Eager: minibatch drawn and collated, proposals, selection,
    regression. Fast: its share (1/UTD) of the batched gather and proposals of a full update's minibatches, then its
    own target and regression step (the shapes of a full update: nothing recompiles)."""
    times, fast = [], agent.fast_update
    n, utd = agent.cfg["batch_size"], agent.cfg["utd"]
    for i in range(reps + 1):
        if fast is None:
            t0 = time.perf_counter()
            batch = agent._symmetric(buf, buf, n)
            agent.critic_step(agent.tensors(batch), batch)
            _sync(agent.device)
            elapsed = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            t = fast._batch(symmetric_indices(buf, buf, n, utd, agent.rng), n * utd)
            base_noise, edit_noise, subsets = fast._draws(n, utd)
            with torch.no_grad():
                candidates = fast._all_candidates(t["next_obs"], base_noise, edit_noise, n)
            _sync(agent.device)
            t1 = time.perf_counter()
            first = {key: v[:n] for key, v in t.items()}
            float(fast._critic_step(first, candidates[:n], subsets[0])["critic/loss"])
            _sync(agent.device)
            elapsed = (t1 - t0) / utd + time.perf_counter() - t1
        if i:
            times.append(elapsed)
    return 1e3 * float(np.median(times))


def compare_paths(cfg: DictConfig, profile: str, reps: int, with_compile: bool, with_backups: bool) -> dict:
    """Eager, fast and (optionally) fast+compile agents built alike, timed in turns (the order rotates)."""
    params = agent_params(load_config([f"profile={profile}"]).agent, profile)
    spec = spec_for(cfg, params)
    buf = synthetic_buffer(spec)
    variants = {"eager": {"fast": False}, "fast": {"fast": True, "compile": False}}
    if with_compile:
        variants["fast_compiled"] = {"fast": True, "compile": True}
    variants["fast_bf16_backup"] = {
        "fast": True,
        "compile": False,
        "backup_bf16": True,
    }  # an option, not a default
    agents, first_s = {}, {}
    for name, over in variants.items():
        agents[name] = make_agent({**params, **over}, spec, device=cfg.device, seed=0)
        first_s[name] = timed_update(agents[name], buf, buf)  # traces, compiles, allocates
        log.info("bench learner %s/%s: first update %.1f s", profile, name, first_s[name])
    names = list(agents)
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed_update(agents[name], buf, buf))
    critic = {name: critic_step_ms(agents[name], buf, max(1, reps // 2)) for name in names}
    eager_ms = 1e3 * float(np.median(times["eager"]))
    out = {"sizes": _sizes(params), "reps": reps, "variants": {}}
    for name in names:
        ms = 1e3 * float(np.median(times[name]))
        fu = agents[name].fast_update
        out["variants"][name] = {
            "full_update_ms": round(ms, 2),
            "full_update_ms_min": round(1e3 * min(times[name]), 2),
            "updates_per_s": round(1e3 / ms, 2),
            "critic_step_ms": round(critic[name], 2),
            "speedup_vs_eager": round(eager_ms / ms, 2),
            "first_update_s": round(first_s[name], 2),
            "compile_s": round(fu.compile_s, 1) if fu is not None and fu.compile_s is not None else None,
        }
    if with_backups:
        out["backup_costs"] = backup_costs(
            agents["eager"], params, spec, agents["eager"].device, buf, buf, reps=8
        )
    return out


def _sizes(params: dict) -> dict:
    b, c, s = params["base"], params["critic"], params["select"]
    return {
        "batch_size": params["batch_size"], "utd": params["utd"], "chunk": params["chunk"],
        "base": f"{b['kind']} hidden {b['hidden']} x{b['blocks']} blocks, {b['steps']} steps",
        "critic": f"{c['members']} members {c['hidden']}x{c['depth']}, subset {c['subset']}",
        "n_backup": s["n_backup"], "proposal_steps": s.get("proposal_steps") or b["steps"],
    }  # fmt: skip


# ----- the profile: where an eager update's time goes -----
def profile_sections(agent, buf, reps: int) -> dict:
    """The eager update taken apart (the same calls in the same order), each section timed."""
    n, s = agent.cfg["batch_size"], agent.cfg["select"]
    acc: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        _sync(agent.device)
        now = time.perf_counter()
        acc[name] = acc.get(name, 0.0) + now - t0
        return now

    for _ in range(reps):
        start = t = time.perf_counter()
        for _ in range(agent.cfg["utd"]):
            batch = agent._symmetric(buf, buf, n)
            t = tick("replay sampling (numpy gather)", t)
            tens = agent.tensors(batch)
            t = tick("to tensors + normalisation (host->device on CUDA)", t)
            with torch.no_grad():
                proposals = agent.base.sample(
                    tens["next_obs"], s["n_backup"], s.get("proposal_steps"), agent.gen
                )
                t = tick("backup sampler (base proposals)", t)
                agent.edit.eval()
                sel = select(tens["next_obs"], agent.critic_target, agent.subset(), proposals=proposals,
                             edit=agent.edit, generator=agent.gen)  # fmt: skip
                target = tens["reward"] + tens["discount"] * sel.q
                t = tick("backup selection (edit + score 2N + argmax)", t)
            q = agent.critic(tens["obs"], tens["action"])
            loss = ((q - target) ** 2).mean()
            t = tick("critic forward + loss", t)
            opt = agent.optims["critic"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t = tick("critic backward", t)
            metrics = {"gn": grad_norm(agent.critic.parameters()), "loss": float(loss.detach())}
            metrics |= {"q": float(q.detach().mean()), "t": float(target.mean())}
            t = tick("metric reads (float() per value, grad norm)", t)
            opt.step()
            t = tick("critic optimiser (Adam)", t)
            soft_update(agent.critic_target, agent.critic, agent.cfg["critic"]["tau"])
            t = tick("target update (per-parameter lerp)", t)
        agent.imitation_step(tens, agent.cfg["base"]["ema_rate"])
        t = tick("base imitation step (fwd, bwd, AdamW, EMA)", t)
        agent.edit_step(tens)
        tick("edit + temperature steps", t)
        acc["total"] = acc.get("total", 0.0) + time.perf_counter() - start
    return {k: round(1e3 * v / reps, 2) for k, v in acc.items()}


def op_table(agent, buf, reps: int) -> tuple[str, dict]:
    """torch.profiler's operator table over `reps` updates, and the time outside operators (Python, dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if agent.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            timed_update(agent, buf, buf)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    aten_s = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
    table = events.table(sort_by="self_cpu_time_total", row_limit=20)
    return table, {
        "update_ms_under_profiler": round(1e3 * wall / reps, 2),
        "aten_ops_ms": round(1e3 * aten_s / reps, 2),
        "outside_aten_ops_ms (python, dispatch, profiler)": round(1e3 * (wall - aten_s) / reps, 2),
    }


def run_profile(cfg: DictConfig, settings: dict, results_dir: Path) -> dict:
    profile = settings["profiles"][0]
    reps = settings["reps"][profile]
    params = agent_params(load_config([f"profile={profile}"]).agent, profile)
    spec = spec_for(cfg, params)
    buf = synthetic_buffer(spec)
    doc = {"sizes": _sizes(params), "reps": reps, "sections_ms": {}, "operators": {}}
    text = []
    for name, fast in (("eager", False), ("fast", True)):
        agent = make_agent({**params, "fast": fast, "compile": False}, spec, device=cfg.device, seed=0)
        timed_update(agent, buf, buf)
        if not fast:
            doc["sections_ms"] = profile_sections(agent, buf, reps)
        table, summary = op_table(agent, buf, reps)
        doc["operators"][name] = summary
        text.append(f"== {name} update, profile={profile}, {reps} updates ==\n{table}")
    path = results_dir / "learner_profile.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    doc["operator_tables"] = str(path)
    doc["summary"] = {"sections_ms": doc["sections_ms"], "operators": doc["operators"]}
    return doc


def run(cfg: DictConfig, words: list[str], results_dir: Path = Path("benchmarks/results")) -> dict:
    settings = settings_for(cfg, words)
    torch.set_num_threads(
        int(settings.get("threads", 1))
    )  # the machine is shared; a learner has its own core
    if not logging.getLogger().handlers:
        setup_logging(None, cfg.get("log_level", "INFO"))
    head = {"benchmark": "learner", "bench_profile": settings["name"], "device": str(resolve_device(cfg.device)),
            "torch_threads": torch.get_num_threads()}  # fmt: skip
    if settings.get("result_name"):
        head["result_name"] = settings["result_name"]
    if settings["name"] == "profile":
        return head | run_profile(cfg, settings, results_dir)
    results = {
        p: compare_paths(
            cfg, p, settings["reps"][p], p in settings["compile"], p in settings.get("backup_costs", [])
        )
        for p in settings["profiles"]
    }
    summary = {
        p: {name: {k: v[k] for k in ("full_update_ms", "updates_per_s", "critic_step_ms", "speedup_vs_eager")}
            for name, v in r["variants"].items()}
        for p, r in results.items()
    }  # fmt: skip
    return head | {"settings": settings, "results": results, "summary": summary}


def markdown_table(doc: dict) -> str:
    """The README's table, made from learner.json: `python -m expo_robot.bench.learner [path]`."""
    rows = [
        "| agent profile | path | full update (ms) | updates/s | critic step (ms) | vs eager | compile (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for profile, result in doc["results"].items():
        for name, v in result["variants"].items():
            compile_s = "" if v["compile_s"] is None else f"{v['compile_s']:.0f}"
            rows.append(
                f"| {profile} | {name} | {v['full_update_ms']:.0f} | {v['updates_per_s']:.2f} | "
                f"{v['critic_step_ms']:.0f} | {v['speedup_vs_eager']:.2f}x | {compile_s} |"
            )
    for profile, result in doc["results"].items():
        costs = result.get("backup_costs")
        if not costs:
            continue
        rows += [
            "",
            f"Backup options, profile={profile} (eager critic step, ms and cost against the exact backup):",
            "",
        ]
        rows += [
            "| option | N | proposal steps | critic step (ms) | cost vs exact |",
            "|---|---|---|---|---|",
        ]
        for name, v in costs.items():
            rows.append(
                f"| {name} | {v['n_backup']} | {v['proposal_steps']} | {v['critic_step_ms']:.0f} | "
                f"{v['cost_ratio_vs_exact']:.2f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    import json
    import sys

    print(
        markdown_table(
            json.loads(
                Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/learner.json").read_text()
            )
        )
    )
