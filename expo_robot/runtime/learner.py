"""Learner process: seeded with offline data, trains on the actors' transitions, publishes weights, checkpoints.

    expo-robot learner runtime.host=0.0.0.0            # alone, e.g. on a GPU server; actors connect to it

Updates are paced by data: every H env steps received earn `session.updates_per_chunk` calls of `agent.update`
(each does the agent's UTD critic steps). Status messages tell actors how far training has got, which
batches are stored and which are safe in a checkpoint, so a lock-step session does not depend on machine speed and a
restarted learner gets back every transition its checkpoint lacks. A batch with values out of range is dropped, counted
by reason and named in the status (messages.check_transitions). Whatever else goes wrong in the loop ends it with a
final checkpoint, one logged line (the traceback goes to learner_error.txt) and exit code 1. The main
loop publishes a status after every update and receipt; a heartbeat thread repeats the newest one every STATUS_EVERY_S
while an update or a checkpoint keeps the loop busy, so an actor tells a slow learner (alive, working)
from a lost one however long an update takes.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from drivers.cameras import configured_shapes
from expo_robot.agent import AgentSpec, agent_params, make_agent
from expo_robot.agent.encoder import agent_image_shapes
from expo_robot.config import make_run_dir
from expo_robot.data.replay import ReplayBuffer
from expo_robot.observe.metrics import BUFFER_SIZE, LEARNER_UPDATES, MetricsLogger
from expo_robot.runtime import scheduling
from expo_robot.runtime.checkpoint import LATEST, PRETRAINED, load_checkpoint, save_checkpoint
from expo_robot.runtime.messages import (
    MessageRejected,
    TransitionLimits,
    check_actor_id,
    check_transitions,
    pack_state,
    transitions_schema,
)
from expo_robot.runtime.offline import load_offline_transitions, offline_dataset_paths
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.sockets import Publisher, Puller, address

log = logging.getLogger(__name__)
STATUS_EVERY_S = 0.2  # the heartbeat: actors count a learner lost after session.learner_timeout_s without one
WEIGHTS_REPEAT_S = (
    1.0  # the newest weights are re-sent this often: late joiners and restarted actors get them
)
ONLINE_CAPACITY = 1_000_000
REJECTION_LOG_EVERY_S = 1.0  # a flood of bad batches must not flood the log


def agent_cameras(cfg: DictConfig, cameras: dict | None = None) -> dict[str, tuple[int, int, int]]:
    """The frame sizes the agent sees: the cameras' (`cameras`, default the configured ones) after the agent's
    resize (`agent.encoder.image_size`)."""
    params = agent_params(cfg.agent, cfg.get("profile"))
    image_size = (params.get("encoder") or {}).get("image_size")
    return agent_image_shapes(
        configured_shapes(cfg.get("cameras")) if cameras is None else cameras, image_size
    )


def agent_spec(cfg: DictConfig, state_dim: int) -> AgentSpec:
    return AgentSpec(
        state_dim, len(cfg.robot.action_low), cfg.robot.action_low, cfg.robot.action_high, cfg.agent.chunk,
        images=agent_cameras(cfg),
    )  # fmt: skip


def transition_limits(cfg: DictConfig, spec: AgentSpec) -> TransitionLimits:
    """What the learner accepts from actors: the agent's spec and the bounds of `session.transitions`."""
    bounds = cfg.session.transitions
    return TransitionLimits(
        spec.state_dim, spec.action_dim, spec.chunk, float(cfg.agent.gamma),
        np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32),
        float(bounds.max_abs_reward), float(bounds.max_abs_state),
    )  # fmt: skip


def _one_line(error: Exception, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


class Learner:
    def __init__(self, cfg: DictConfig, run_dir: Path, stop: threading.Event | None = None):
        self.cfg, self.run_dir, self.stop = cfg, run_dir, stop or threading.Event()
        self.id = uuid.uuid4().hex[:8]
        self.gamma = float(cfg.agent.gamma)
        self.updates_per_step = float(cfg.session.updates_per_chunk) / int(cfg.agent.chunk)
        self.updates = self.env_steps = 0
        self.earned = 0.0  # updates earned by received env steps and not yet done
        self.received: dict[str, int] = {}  # actor -> last contiguous batch seq stored
        self.acked: dict[str, int] = {}  # actor -> last batch seq safe in a checkpoint
        self.episodes = 0
        self.rejected: Counter = Counter()  # dropped batches, by reason
        self.skipped = 0  # resent batches (already stored) and batches after a gap (resent later)
        # actor -> its last dropped batch {seq, reason}, for its status
        self.last_rejected: dict[str, dict] = {}
        self._rejection_logged = -REJECTION_LOG_EVERY_S
        self.weights_dirty, self._weights, self._weights_version = True, None, 0
        self.metrics = MetricsLogger(run_dir)
        self.rng = np.random.default_rng(cfg.seed)
        # keys first: a missing keys folder is refused at start, not after minutes of set-up
        curve = curve_keys(cfg.runtime)
        self._setup_data_and_agent()
        self.limits = transition_limits(cfg, self.agent.spec)
        self.max_actors = int(cfg.session.transitions.max_actors)
        self.inbox = Puller(
            address(cfg.runtime, "transitions"),
            schema={"transitions": transitions_schema(self.agent.spec.images)},
            hwm=1000,
            curve=curve,
        )
        self.outbox = Publisher(address(cfg.runtime, "weights"), hwm=4, curve=curve)
        self._outbox_lock = threading.Lock()  # the main loop and the heartbeat thread share the socket
        self._status_meta = self._status()
        self._last_status = -math.inf
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="learner-heartbeat", daemon=True)

    # ---- set-up ----
    def _setup_data_and_agent(self) -> None:
        cfg = self.cfg
        self.metrics.log(0, "learner", phase="learner: loading the offline data")
        offline, self.offline_summary = load_offline_transitions(
            offline_dataset_paths(cfg, on_episode=self._seed_progress),
            cfg.agent.chunk,
            self.gamma,
            configured_shapes(cfg.get("cameras")),
            agent_cameras(cfg),
        )
        spec = agent_spec(cfg, offline["obs"].shape[1])
        self.agent = make_agent(cfg.agent, spec, device=cfg.device, seed=cfg.seed)
        capacity = (
            ONLINE_CAPACITY if not spec.images else ONLINE_CAPACITY // 10
        )  # frames: 28 KB each at 96x96
        self.offline = ReplayBuffer(
            len(offline["obs"]) + capacity // 10, spec.state_dim, spec.chunk, spec.action_dim, spec.images
        )
        self.offline.add_batch(offline)
        self.online = ReplayBuffer(capacity, spec.state_dim, spec.chunk, spec.action_dim, spec.images)
        if cfg.session.resume:
            self._resume(cfg.session.resume)
        else:
            if cfg.session.pretrained:
                self.agent.load_state_dict(load_checkpoint(cfg.session.pretrained, self.trust)["agent"])
                log.info("base policy from %s", cfg.session.pretrained)
            elif cfg.session.pretrain_steps > 0:
                self._pretrain(int(cfg.session.pretrain_steps))

    def _seed_progress(self, done: int, total: int, successes: int) -> None:
        """Scripted seed data being made (sim, first run): for the live status."""
        self.metrics.log(
            0, "learner", **{"seed/episodes": done, "seed/total": total, "seed/successes": successes}
        )

    def _pretrain(self, steps: int) -> None:
        log.info(
            "pretraining the base policy by imitation: %d steps on %d transitions", steps, len(self.offline)
        )
        t0 = time.monotonic()

        def progress(step: int, info: dict) -> None:  # every 100 steps: the live status and the curves
            self.metrics.log(
                0, "learner", **{f"pretrain/{k}": v for k, v in info.items()},
                **{"pretrain/step": step, "pretrain/steps": steps},
            )  # fmt: skip
            if step % max(1, steps // 10) == 0:
                log.info("pretrain %d/%d %s", step, steps, {k: round(float(v), 4) for k, v in info.items()})

        self.agent.pretrain(self.offline, steps, progress=progress)
        # The BC start, kept so `expo-robot eval` can compare it with the fine-tuned policy.
        path = save_checkpoint(
            self.run_dir / "checkpoints" / PRETRAINED,
            {"agent": self.agent.state_dict(), "config": self.cfg_yaml()},
        )
        log.info("pretraining done in %.0f s; base policy saved to %s", time.monotonic() - t0, path)

    def _resume(self, path: str) -> None:
        state = load_checkpoint(path, self.trust)
        self.agent.load_state_dict(state["agent"])
        self.online.load_state_dict(state["online"])
        self.offline.load_state_dict(state["offline"])
        c = state["counters"]
        self.updates, self.env_steps, self.episodes = c["updates"], c["env_steps"], c["episodes"]
        self.received = dict(c["received"])
        self.rejected = Counter(c.get("rejected", {}))
        self.acked = dict(self.received)
        log.info(
            "resumed from %s: %d updates, %d env steps, %d online transitions",
            path,
            self.updates,
            self.env_steps,
            len(self.online),
        )

    @property
    def trust(self) -> bool:
        """trust_checkpoint=true: old torch.save checkpoints (pickles) load too."""
        return bool(self.cfg.get("trust_checkpoint", False))

    # ---- loop ----
    def run(self) -> int:
        """Until `stop`: 0 after a final checkpoint; 1 after an unexpected error (see `_crashed`)."""
        try:
            self._loop()
        except Exception as e:  # the last resort: whatever broke, keep what was learned and exit cleanly
            return self._crashed(e)
        self.checkpoint()
        self._publish_status()
        self.close()
        return 0

    def _crashed(self, error: Exception) -> int:
        """Keep what can be kept (a final checkpoint, the traceback in a file), say it in one line, exit code 1."""
        where = traceback.extract_tb(error.__traceback__)[-1]
        trace = self.run_dir / "learner_error.txt"
        try:
            trace.write_text("".join(traceback.format_exception(error)))
            traced = f"traceback in {trace}"
        except OSError as e:
            traced = f"traceback not written ({e})"
        try:
            saved = f"final checkpoint {self.checkpoint()}"
        except Exception as e:  # (the state may be what broke)
            saved = f"no final checkpoint ({type(e).__name__}: {_one_line(e)})"
        log.error("learner stopped by %s: %s at %s:%d; %s; %s", type(error).__name__, _one_line(error),
                  Path(where.filename).name, where.lineno, saved, traced)  # fmt: skip
        try:
            self.close()
        except Exception as e:  # (closing must not turn exit code 1 into a traceback)
            log.error("learner: closing failed: %s", _one_line(e))
        return 1

    def _loop(self) -> None:
        last_weights = 0.0
        self.metrics.log(self.env_steps, "learner", phase="learner ready: the actor starts")
        log.info(
            "learner %s ready: offline %d transitions, online %d",
            self.id,
            len(self.offline),
            len(self.online),
        )
        self._heartbeat.start()
        while not self.stop.is_set():
            got = self._receive(timeout_s=0.0 if self.earned >= 1 else 0.05)
            updated = self.earned >= 1 and len(self.online) > 0
            if updated:
                self._update()
            if got or updated:
                self._publish_status()
            now = time.monotonic()
            if self.weights_dirty or now - last_weights > WEIGHTS_REPEAT_S:
                # idle with weights older than its last update (e.g. the end of a budget): the newest go out
                self.weights_dirty |= self.earned < 1 and self._weights_version < self.updates
                self._publish_weights()
                last_weights = now

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(STATUS_EVERY_S / 2):
            if time.monotonic() - self._last_status >= STATUS_EVERY_S:
                self._send_status()

    def _receive(self, timeout_s: float) -> bool:
        got = False
        msg = self.inbox.recv(timeout_s)
        while msg is not None:
            got |= self._store(msg)
            msg = self.inbox.recv(0.0)
        return got

    def _store(self, msg) -> bool:
        """Store the next batch of an actor; a resend or a gap is skipped, a batch out of range is dropped."""
        actor, seq = msg.meta["actor"], msg.meta["seq"]
        try:
            check_actor_id(actor)
        except MessageRejected as e:
            return self._reject(None, seq, e)
        if seq != self.received.get(actor, 0) + 1:  # a gap or a resend: the actor resends from our status
            self.skipped += 1
            return False
        if actor not in self.received and len(self.received) >= self.max_actors:
            full = MessageRejected(
                "too_many_actors", f"{self.max_actors} actors already (session.transitions)"
            )
            return self._reject(None, seq, full)
        try:
            check_transitions(msg.arrays, msg.meta, self.limits)
        except MessageRejected as e:
            return self._reject(actor, seq, e)
        batch = {k: np.asarray(v) for k, v in msg.arrays.items()}
        self.online.add_batch(batch)  # (cannot fail: check_transitions checked every shape)
        interventions = batch["intervention"]
        if interventions.any():  # EXPO-FT: operator takeovers are offline-quality data
            self.offline.add_batch({k: v[interventions] for k, v in batch.items()})
        self.received[actor] = seq
        steps = int(msg.meta["env_steps"])
        self.env_steps += steps
        self.earned += steps * self.updates_per_step
        self.episodes += 1
        self.metrics.log(
            self.env_steps,
            "learner",
            **{BUFFER_SIZE: len(self.online)},
            **{"buffer/interventions": int(interventions.sum())},
        )
        return True

    def _reject(self, actor: str | None, seq: int, error: MessageRejected) -> bool:
        """Count and log a dropped batch. Its seq counts as received (then acked), so the actor's resends do not
        wedge on it, and its status names it (the actor logs it; the episode stays in its recorded dataset).
        `actor` None: a sender this learner does not keep track of (bad id, too many actors)."""
        self.rejected[error.reason] += 1
        if actor is not None:
            self.received[actor] = seq
            self.last_rejected[actor] = {"seq": seq, "reason": error.reason}
        now = time.monotonic()
        if now - self._rejection_logged >= REJECTION_LOG_EVERY_S:
            self._rejection_logged = now
            log.warning("dropped transitions batch %d of %s: %s (dropped so far: %s)", seq,
                        actor or "an unknown sender", error, dict(self.rejected))  # fmt: skip
            rejected = {f"transitions/rejected.{reason}": n for reason, n in self.rejected.items()}
            self.metrics.log(self.env_steps, "learner", **rejected)
        return actor is not None

    def _update(self) -> None:
        t0 = time.perf_counter()
        info = self.agent.update(self.offline, self.online)
        self.updates += 1
        self.earned -= 1
        s = self.cfg.session
        if self.updates % s.weights_every == 0:
            self.weights_dirty = True
        if self.updates % s.checkpoint_every == 0:
            self.checkpoint()
        if self.updates % 10 == 0:
            info = {k: float(v) for k, v in info.items() if np.isscalar(v) or getattr(v, "ndim", 1) == 0}
            self.metrics.log(
                self.env_steps,
                "learner",
                **info,
                **{LEARNER_UPDATES: self.updates, "learner/update_ms": 1e3 * (time.perf_counter() - t0)},
            )

    @property
    def trained_steps(self) -> int:
        """Env steps whose earned updates are all done."""
        per = self.updates_per_step
        return int(self.env_steps - max(0.0, self.earned) / per) if per > 0 else self.env_steps

    # ---- publishing ----
    def _publish_weights(self) -> None:
        if self.weights_dirty or self._weights is None:
            self._weights = pack_state(self.agent.acting_state())
            self._weights_version = self.updates
            self.weights_dirty = False
        arrays, meta = self._weights
        with self._outbox_lock:
            self.outbox.send(
                "weights", arrays, {**meta, "version": self._weights_version, "learner": self.id}
            )

    def _status(self) -> dict:
        return {
            "learner": self.id,
            "updates": self.updates,
            "pending_updates": int(self.earned),  # earned and not done yet (0: the learner has caught up)
            "env_steps": self.env_steps,
            "trained_steps": self.trained_steps,
            "online": len(self.online),
            "offline": len(self.offline),
            "received": dict(self.received),
            "acked": dict(self.acked),
            "rejected": dict(self.last_rejected),
        }

    def _publish_status(self) -> None:
        """A status of the counters as they stand now (built on the main thread, so it is consistent), sent now and
        repeated by the heartbeat thread while the loop is busy."""
        self._status_meta = self._status()
        self._send_status()

    def _send_status(self) -> None:
        with self._outbox_lock:
            self.outbox.send("status", None, self._status_meta)
            self._last_status = time.monotonic()

    def checkpoint(self) -> Path:
        counters = {
            "updates": self.updates,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "received": dict(self.received),
            "rejected": dict(self.rejected),
        }
        state = {
            "agent": self.agent.state_dict(),
            "online": self.online.state_dict(),
            "offline": self.offline.state_dict(),
            "counters": counters,
            "config": self.cfg_yaml(),
        }
        path = save_checkpoint(self.run_dir / "checkpoints" / LATEST, state)
        self.acked = dict(self.received)
        log.info("checkpoint %s (%d updates, %d online transitions)", path, self.updates, len(self.online))
        return path

    def cfg_yaml(self) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(self.cfg, resolve=True)

    def close(self) -> None:
        self.stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=5)
        self.inbox.close()
        with self._outbox_lock:
            self.outbox.close(
                linger_s=0.2
            )  # the final status (what the last checkpoint holds) still goes out
        self.metrics.close()


def main(cfg: DictConfig, words: list[str]) -> int:
    """`expo-robot learner`: run the learner until SIGINT/SIGTERM, then checkpoint."""
    run_dir = make_run_dir(cfg, "learner")
    scheduling.apply(cfg.runtime, "learner")  # priority and threads (runtime.scheduling.learner)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return Learner(cfg, run_dir, stop).run()
