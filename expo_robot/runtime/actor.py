"""Policy process (actor): on-the-fly EXPO selection at control rate, episodes, rewards, transitions to the learner.

    expo-robot actor runtime.host=10.0.0.5 session.env_steps=20000   # alone, next to the robot's driver

Each decision: the newest observation -> `agent.act` (propose, edit, score, select) -> a chunk stamped with the time
its first step is due (the driver skips steps already past) -> the next `replan_every` observations. In real time
the next decision starts `session.realtime_lead_steps` steps before that, so its chunk reaches the driver before the
tick it is for (the newest chunk replaces the rest of the current one); in lock-step the driver waits. Weights are
swapped between chunks. At the end of an episode its chunk transitions (the actions the driver really executed) go
to the learner; every batch is kept until the learner has it in a checkpoint, so a learner restarted from its
checkpoint gets back everything it lost.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from drivers.cameras import configured_shapes
from expo_robot.agent import AgentSpec, make_agent
from expo_robot.agent.encoder import resize_frames
from expo_robot.config import ConfigError, make_run_dir
from expo_robot.data.chunking import chunk_transitions
from expo_robot.data.dataset_io import DatasetError, camera_features, dataset_features
from expo_robot.observe import metrics as M
from expo_robot.observe.metrics import MetricsLogger
from expo_robot.observe.stats import latency_summary
from expo_robot.runtime import scheduling
from expo_robot.runtime.learner import STATUS_EVERY_S, agent_cameras
from expo_robot.runtime.messages import (
    LEARNER_OUTBOX,
    MessageRejected,
    check_acting_state,
    check_status,
    unpack_state,
)
from expo_robot.runtime.recorder_process import RecorderProcess
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.robot_client import RobotClient
from expo_robot.transport.sockets import Pusher, Subscriber, address

log = logging.getLogger(__name__)
EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes use their own seeds: the same scenes before and after
RESEND_AFTER_S = 3.0  # the learner's count of our batches has not moved for this long: resend from its count
STALL_S = 5.0  # no fresh observation for this long ends the episode (driver held by its safety layer)
DROP_LOG_EVERY_S = 5.0  # dropped learner messages are logged at most this often


class ReplanNeeded(Exception):
    """Real time: the driver ran no step of our chunk for a few periods (e.g. it dropped the chunk during a
    watchdog hold); a new chunk from the newest state gets the robot going again."""


class EpisodeAborted(RuntimeError):
    """The driver stopped stepping (safety hold, e-stop, lost driver); the episode ends as a failure."""


@dataclass
class EpisodeResult:
    success: bool
    ret: float
    length: int
    interventions: int
    stop_reason: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    # the driver's safety snapshot at the end (state, reason, counters), and when each step ran (loop cadence)
    safety: dict = field(default_factory=dict)
    step_wall: list[float] = field(default_factory=list)
    label: str = ""  # "success" / "failure" when the operator ended the episode with a key
    learner_updates: int = -1  # learning: the learner's updates when the episode's first chunk was decided


class OperatorLabels:
    """The operator's episode labels. The driver counts their keys (`operator.success`, `operator.failure`) in
    every observation it publishes, so a key pressed between two steps, or a lost message, is never missed."""

    KEYS = ("success", "failure")

    def __init__(self) -> None:
        self.base: dict[str, int] = {}

    def start(self, counters: dict) -> None:
        self.base = {k: int(counters.get(f"operator.{k}", 0)) for k in self.KEYS}

    def pressed(self, counters: dict) -> str:
        """The label pressed since `start` ("" if none); success wins if both were."""
        for k in self.KEYS:
            if int(counters.get(f"operator.{k}", 0)) > self.base.get(k, 0):
                return k
        return ""


class LearnerLink:
    """The actor's view of the learner: weights, status, and transitions kept until they are safe."""

    def __init__(self, cfg: DictConfig, actor_id: str):
        curve = curve_keys(cfg.runtime)
        host = cfg.runtime.learner_host
        self.sub = Subscriber(
            address(cfg.runtime, "weights", host), schema=LEARNER_OUTBOX, hwm=8, curve=curve
        )
        self.push = Pusher(address(cfg.runtime, "transitions", host), hwm=1000, curve=curve)
        self.actor_id, self.timeout_s = actor_id, float(cfg.session.learner_timeout_s)
        self.status: dict = {}
        self.seen = 0.0
        self.weights: dict | None = None
        self.weights_key: tuple[str, int] | None = (
            None  # (learner id, version) of the newest weights received
        )
        self.kept: dict[int, tuple[dict, dict]] = {}  # seq -> (arrays, meta), until acked
        self.next_seq, self.send_from = 1, 1
        self._last_progress, self._progress_t = (0, 0), time.monotonic()
        self.own_weights: dict[str, np.ndarray] | None = None  # the agent's acting tensors (set at connect)
        self.dropped: Counter = Counter()  # learner messages dropped for their values, by reason
        self._drop_logged = -DROP_LOG_EVERY_S
        self.refused: Counter = Counter()  # our batches the learner dropped, by reason
        self._last_refusal: tuple | None = None

    @property
    def weights_version(self) -> int:
        return self.weights_key[1] if self.weights_key is not None else -1

    @property
    def silent_s(self) -> float:
        return time.monotonic() - self.seen

    @property
    def alive(self) -> bool:
        return self.silent_s < self.timeout_s

    def poll(self) -> None:
        """Read everything the learner published; remember the newest weights and status. A message whose values
        are out of range is dropped, counted by reason and logged."""
        while (msg := self.sub.recv(0.0)) is not None:
            try:
                if msg.type == "weights":
                    self._on_weights(msg)
                else:
                    check_status(msg.meta)
                    self._on_status(msg.meta)
            except MessageRejected as e:
                self._drop(msg.type, e)
        self._send_pending()

    def _on_weights(self, msg) -> None:
        # The learner re-sends its newest weights every second for late joiners: only a new version (or a new
        # learner) is unpacked and loaded, so the control loop does not reload the same tensors.
        key = (msg.meta["learner"], msg.meta["version"])
        if key == self.weights_key:
            return
        try:
            weights = unpack_state(msg.arrays, msg.meta)
        except ValueError as e:
            raise MessageRejected("weights_layout", str(e)) from e
        if self.own_weights is not None:
            check_acting_state(weights, self.own_weights)
        self.weights, self.weights_key = weights, key

    def _drop(self, msg_type: str, error: MessageRejected) -> None:
        self.dropped[error.reason] += 1
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY_S:
            self._drop_logged = now
            log.error("%s: dropped a %s message from the learner: %s (dropped so far: %s)", self.actor_id,
                      msg_type, error, dict(self.dropped))  # fmt: skip

    def _on_status(self, status: dict) -> None:
        received = status["received"].get(self.actor_id, 0)
        if self.next_seq == 1 and not self.kept:  # a new actor continues a resumed session's numbering
            self.next_seq = self.send_from = received + 1
        if received >= self.next_seq:
            raise MessageRejected(
                "seq_ahead", f"status counts {received} batches of ours, we sent {self.next_seq - 1}"
            )
        self._note_refused(status)
        if status["learner"] != self.status.get("learner"):
            if self.status:
                log.warning(
                    "learner %s is back (was %s): resending what it lacks",
                    status["learner"],
                    self.status.get("learner"),
                )
            self.send_from = status["acked"].get(self.actor_id, 0) + 1
        now = time.monotonic()
        # The learner reads its inbox between updates: while neither its count of our batches nor its updates move,
        # it is inside one long update (its heartbeat still comes), not missing a batch; resend only when it moves
        # on without the batch.
        progress = (received, status["updates"])
        if progress != self._last_progress:
            self._last_progress, self._progress_t = progress, now
        elif self.send_from > received + 1 and now - self._progress_t > RESEND_AFTER_S:
            self.send_from, self._progress_t = received + 1, now  # a batch went missing in flight: resend
        self.status, self.seen = status, now
        acked = status["acked"].get(self.actor_id, 0)
        for seq in [s for s in self.kept if s <= acked]:
            del self.kept[seq]

    def _note_refused(self, status: dict) -> None:
        """The learner dropped a batch of ours (values out of its bounds): said once, loudly; its seq counts as
        received, so nothing waits for it, and the episode stays in this actor's recorded dataset."""
        refused = status.get("rejected", {}).get(self.actor_id)
        if refused is None:
            return
        key = (status["learner"], refused["seq"], refused["reason"][:64])
        if key == self._last_refusal:
            return
        self._last_refusal = key
        self.refused[key[2]] += 1
        log.error("%s: the learner dropped our transitions batch %d (%s): it does not learn from that episode; "
                  "do the actor's and the learner's configs differ?", self.actor_id, key[1], key[2])  # fmt: skip

    def submit(self, batch: dict[str, np.ndarray], env_steps: int) -> None:
        meta = {"actor": self.actor_id, "seq": self.next_seq, "env_steps": int(env_steps)}
        self.kept[self.next_seq] = (batch, meta)
        self.next_seq += 1
        self._send_pending()

    def _send_pending(self) -> None:
        while self.send_from < self.next_seq:
            if self.send_from in self.kept and not self.push.send("transitions", *self.kept[self.send_from]):
                return  # queue full: retry on the next poll
            self.send_from += 1

    def unreceived(self) -> int:
        return self.next_seq - 1 - self.status.get("received", {}).get(self.actor_id, 0)

    def backlog(self) -> int:
        """Env steps received by the learner whose updates are not done yet."""
        return int(self.status.get("env_steps", 0)) - int(self.status.get("trained_steps", 0))

    def caught_up(self) -> bool:
        """The learner has every batch, has done every update they earned, and we hold the weights of the last."""
        s = self.status
        return (
            self.unreceived() <= 0
            and int(s.get("pending_updates", 0)) == 0
            and self.weights_version >= int(s.get("updates", 0))
        )

    def close(self) -> None:
        self.sub.close()
        self.push.close()


def next_tick(state_t: float, driver_now: float, dt: float) -> float:
    """The first tick after `driver_now` on the grid of ticks through `state_t` (and at least the one after it)."""
    return state_t + dt * max(1, math.floor((driver_now - state_t) / dt) + 1)


class Actor:
    """Runs episodes on a driver. With a LearnerLink it learns (weights in, transitions out); without one it acts
    with fixed weights (evaluation)."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        actor_id: str | None = None,
        stop: threading.Event | None = None,
        learn: bool = True,
    ):
        self.cfg, self.run_dir, self.stop = cfg, run_dir, stop or threading.Event()
        self.id = actor_id or f"actor-{uuid.uuid4().hex[:6]}"
        self.session = cfg.session
        self.chunk = int(cfg.agent.chunk)
        self.replan_every = int(cfg.agent.get("replan_every") or self.chunk)
        self.replan_after = (
            self.replan_every
        )  # steps of a chunk observed before the next decision (see connect)
        self.gamma = float(cfg.agent.gamma)
        self.robot = RobotClient(  # the driver must publish the cameras the learner and the datasets expect
            {**OmegaConf.to_container(cfg.runtime, resolve=True), "host": cfg.runtime.driver_host},
            expected={"cameras": configured_shapes(cfg.get("cameras"))},
        )
        self.link = LearnerLink(cfg, self.id) if learn else None
        self.metrics = MetricsLogger(run_dir, tensorboard=False)
        self.env_steps = self.episodes = self.chunks_sent = 0
        self.episode_seed = int(cfg.seed) * 100_000
        self.robot_episode = -1  # the driver's episode counter, as last seen
        self.writers: dict[str, RecorderProcess] = {}  # dataset name -> its recording process (see connect)
        self.recording_failed: set[str] = set()
        self.labels = OperatorLabels()
        self.classifier_cfg = cfg.get("reward_classifier") or {}
        self.classifier = None
        if self.classifier_cfg.get("path"):  # image tasks without a success detector (expo-robot reward)
            from expo_robot.runtime.reward import load_classifier

            self.classifier = load_classifier(
                self.classifier_cfg.path, bool(cfg.get("trust_checkpoint", False))
            )
        self.classifier_hits = 0
        self.success_reward = float(self.session.get("operator_success_reward", 1.0))
        # lock-step pacing: decisions taken without waiting for a lost learner, and since when it is lost
        self.unpaced_decisions = 0
        self.learner_lost_at: float | None = None

    # ---- set-up ----
    def connect(self, agent_state: dict | None = None) -> None:
        """Handshake with the driver, build the agent, then load `agent_state` (a checkpoint's) or wait for the
        learner's first weights."""
        spec = self.robot.connect(timeout_s=float(self.cfg.runtime.recv_timeout_s) * 5)
        self.frame_shapes = agent_cameras(self.cfg, dict(spec.cameras))  # what the agent sees, after resizing
        if self.classifier is not None and set(self.classifier.cameras) != set(spec.cameras):
            raise ConfigError(
                f"the reward classifier {self.classifier_cfg.path} was trained on cameras "
                f"{sorted(self.classifier.cameras)}; the robot has {sorted(spec.cameras)}: use matching cameras="
            )
        self._start_recorders(spec)
        self.dt = 1.0 / spec.fps
        if spec.mode == "realtime":
            self.replan_after = max(1, self.replan_every - int(self.session.get("realtime_lead_steps", 0)))
        self.agent = make_agent(
            self.cfg.agent,
            AgentSpec(
                spec.state_dim,
                spec.action_dim,
                spec.action_low,
                spec.action_high,
                self.chunk,
                self.frame_shapes,
            ),
            device=self.cfg.device,
            seed=int(self.cfg.seed),
        )
        if self.link is not None:  # the learner's weights must fit these networks exactly
            self.link.own_weights = self.agent.acting_state()
        log.info("%s: robot %s (%s, %.0f Hz)", self.id, spec.robot, spec.mode, spec.fps)
        if agent_state is not None:
            self.agent.load_state_dict(agent_state)
        else:
            self._wait_first_weights()
            self.env_steps = self._resumed_env_steps()
        self._warm_up(spec)
        self._recorders_ready()
        scheduling.freeze_heap()

    def _resumed_env_steps(self) -> int:
        """Where the budget stands: 0, or on resume the learner's env steps (the robots' sum: each robot's share)."""
        if not self.session.resume:
            return 0
        return int(self.link.status.get("env_steps", 0)) // max(1, int(self.session.get("robots") or 1))

    def _warm_up(self, spec) -> None:
        """One decision of each kind before the first episode: the first call traces the sampler's graph (~0.1 s),
        which must not happen while the robot waits for a chunk."""
        state = np.zeros(spec.state_dim, np.float32)
        images = {k: np.zeros(shape, np.uint8) for k, shape in self.frame_shapes.items()} or None
        for mode in ("explore", "eval"):
            self.agent.act(state, mode=mode, images=images)

    def _wait_first_weights(self) -> None:
        log.info("%s: waiting for the learner's first weights", self.id)
        deadline = time.monotonic() + float(self.session.first_weights_timeout_s)
        while self.link.weights is None:
            if self.stop.is_set() or time.monotonic() > deadline:
                raise TimeoutError(
                    f"no weights from the learner at {address(self.cfg.runtime, 'weights', self.cfg.runtime.learner_host)} within "
                    f"{self.session.first_weights_timeout_s} s: is `expo-robot learner` running and reachable?"
                )
            self.link.poll()
            time.sleep(0.05)
        self._load_weights()

    def _load_weights(self) -> None:
        if self.link is not None and self.link.weights is not None:
            self.agent.load_acting_state(self.link.weights)
            self.link.weights = None

    # ---- session ----
    def run(self) -> dict:
        self.connect()
        summary: dict = {"actor": self.id}
        n_eval = int(self.session.eval_episodes)
        if n_eval:
            summary["before"] = self.evaluate(n_eval, "before")
        t0 = time.monotonic()
        while self.env_steps < int(self.session.env_steps) and not self.stop.is_set():
            self.run_episode(mode="explore", learn=True)
        summary["online_s"] = time.monotonic() - t0
        self._wait_for_learner_to_finish()
        if n_eval and not self.stop.is_set():
            self.link.poll()
            self._load_weights()  # the newest weights, then fixed during the evaluation
            summary["after"] = self.evaluate(n_eval, "after")
        summary.update(
            env_steps=self.env_steps,
            episodes=self.episodes,
            weights_version=self.link.weights_version,
            learner_updates=int(self.link.status.get("updates", 0)),
            unpaced_decisions=self.unpaced_decisions,
        )
        (self.run_dir / f"{self.id}.json").write_text(json.dumps(summary, indent=2))
        return summary

    def evaluate(self, n: int, label: str) -> dict:
        first = n * int(self.cfg.get("robot_index") or 0)  # several robots: each plays its own scenes
        results: list[EpisodeResult] = []
        for i in range(n):
            if self.stop.is_set():
                break
            results.append(self.run_episode("eval", learn=False, seed=EVAL_SEED_OFFSET + first + i))
            self.metrics.log(  # for the live status
                self.env_steps, "eval", **{"eval/label": label, "eval/done": i + 1, "eval/of": n,
                                           "eval/successes_so_far": sum(r.success for r in results)},
            )  # fmt: skip
        successes = sum(r.success for r in results)
        lat = latency_summary([x for r in results for x in r.latencies_ms]) if results else {}
        self.metrics.log(
            self.env_steps,
            "eval",
            **{M.EVAL_SUCCESSES: successes, M.EVAL_EPISODES: len(results), "eval/label": label},
            actor=self.id,
        )
        stops: dict[str, int] = {}
        for r in results:
            if r.stop_reason:
                stops[r.stop_reason] = stops.get(r.stop_reason, 0) + 1
        log.info("%s eval (%s): %d/%d successes", self.id, label, successes, len(results))
        return {
            "successes": successes,
            "episodes": len(results),
            "latency_ms": lat,
            "stops": stops,
            "mean_length": float(np.mean([r.length for r in results])) if results else 0.0,
        }

    def run_episode(self, mode: str, learn: bool, seed: int | None = None) -> EpisodeResult:
        if seed is None:
            self.episode_seed += 1
            seed = self.episode_seed
        obs = self._reset(seed)
        self.labels.start((self.robot.latest or obs).counters)
        self.classifier_hits = 0
        states, actions, rewards, flags, stamps = [obs.state], [], [], [], [obs.stamp]
        frames = {name: [img] for name, img in self._frames(obs).items()}
        result = EpisodeResult(False, 0.0, 0, 0)
        self.last_loop = obs.loop
        terminated = False
        try:
            while not terminated:
                if self.link is not None:
                    self.link.poll()
                    self._load_weights()
                if learn:
                    self._wait_for_learner()
                    if result.learner_updates < 0:
                        result.learner_updates = int(self.link.status.get("updates", 0))
                if actions and self._operator_label(result, rewards):  # pressed while no chunk ran
                    terminated = True
                    break
                t = time.perf_counter()
                chunk = self.agent.act(
                    obs.state, mode=mode, images={k: f[-1] for k, f in frames.items()} or None
                )
                result.latencies_ms.append(1e3 * (time.perf_counter() - t))
                t0 = self._chunk_t0(obs)
                self.robot.send_chunk(np.asarray(chunk, np.float32), t0=t0, chunk_id=self.chunks_sent)
                self.chunks_sent += 1
                # Replan after the step due at t0 + (replan_after - 1) periods: counted in time, not in steps,
                # because the driver skips the steps of a late chunk that are already past.
                last_due = t0 + (self.replan_after - 1.5) * self.dt
                while True:
                    try:
                        obs = self._next_obs(obs.step)
                    except ReplanNeeded:
                        break
                    states.append(obs.state)
                    actions.append(obs.action)
                    rewards.append(obs.reward)
                    flags.append(obs.intervention)
                    stamps.append(obs.stamp)
                    for name, img in self._frames(obs).items():
                        frames[name].append(img)
                    self.last_loop = obs.loop
                    result.step_wall.append(obs.wall)
                    result.success |= bool(obs.success)
                    terminated = (
                        bool(obs.terminated)
                        or self._operator_label(result, rewards)
                        or self._classifier_label(result, rewards, obs)
                    )
                    if terminated or obs.truncated:
                        break
                    if obs.t >= last_due:
                        break
                if obs.truncated:
                    break
        except EpisodeAborted as e:
            result.stop_reason = str(e)
            log.warning("%s: episode ended early: %s", self.id, e)
        result.safety = dict((self.robot.latest or obs).safety)
        result.length, result.ret = len(actions), float(np.sum(rewards))
        result.interventions = int(np.sum(flags))
        if learn:
            self.env_steps += len(actions)
            self.episodes += 1
            if actions and not result.stop_reason:
                batch = chunk_transitions(
                    np.stack(states),
                    np.stack(actions),
                    np.asarray(rewards),
                    terminated,
                    self.chunk,
                    self.gamma,
                    stride=1,
                    interventions=np.asarray(flags, bool),
                    images={name: np.stack(f) for name, f in frames.items()} or None,
                )
                self.link.submit(batch, len(actions))
            self._log_episode(result)
        self._record(mode, states, actions, rewards, flags, stamps, frames, result, terminated)
        for ms in result.latencies_ms:  # one record per decision: the latency histogram and percentiles
            self.metrics.log(self.env_steps, "actor", **{M.POLICY_LATENCY_MS: ms})
        if self.robot.spec.mode == "realtime" and len(stamps) > 1:
            for period in np.diff(stamps):  # the driver's tick-to-tick periods, as it stamped them
                self.metrics.log(self.env_steps, "driver", **{M.LOOP_PERIOD_MS: 1e3 * float(period)})
        return result

    def _frames(self, obs) -> dict[str, np.ndarray]:
        """The observation's camera frames at the agent's size (copies: the received ones are socket buffers)."""
        return {k: np.array(resize_frames(v, self.frame_shapes[k])) for k, v in obs.images.items()}

    def _operator_label(self, result: EpisodeResult, rewards: list[float]) -> bool:
        """An operator's success/failure key ends the episode as a terminal one; success is rewarded on the step
        it was pressed (the task's own success counts too, so in the simulator either can end an episode)."""
        label = self.labels.pressed(self.robot.latest.counters if self.robot.latest else {})
        if not label:
            return False
        result.label = label
        if label == "success":
            result.success = True
            rewards[-1] = max(float(rewards[-1]), self.success_reward)
        log.info("%s: the operator labels the episode a %s", self.id, label)
        return True

    def _classifier_label(self, result: EpisodeResult, rewards: list[float], obs) -> bool:
        """The reward classifier (reward_classifier.path) fires: P(success) above the threshold on `consecutive`
        frames in a row ends the episode as a success, rewarded on that step, as the operator's key would."""
        if self.classifier is None:
            return False
        frames = {k: resize_frames(v, self.classifier.cameras[k]) for k, v in obs.images.items()}
        p = self.classifier.prob(frames)
        self.classifier_hits = self.classifier_hits + 1 if p > self.classifier_cfg.threshold else 0
        if self.classifier_hits < int(self.classifier_cfg.consecutive):
            return False
        result.label, result.success = "success", True
        rewards[-1] = max(float(rewards[-1]), self.success_reward)
        log.info("%s: the reward classifier labels the episode a success (p=%.2f)", self.id, p)
        return True

    def _record(
        self, mode, states, actions, rewards, flags, stamps, frames, result: EpisodeResult, terminated: bool
    ) -> None:
        """The episode as the robot lived it (executed actions, flags, driver-clock times), saved off this thread,
        so the online data of one session can seed the next (`session.offline.datasets=[<run>/episodes/<actor>]`)."""
        writer = self._writer(mode)
        if writer is None or not actions:
            return
        try:
            for t, action in enumerate(actions):
                end = t == len(actions) - 1
                writer.add_frame(
                    states[t], action, rewards[t], intervention=bool(flags[t]), success=end and result.success,
                    safety_stop=end and bool(result.stop_reason), capture_time=float(stamps[t]),
                    images={name: f[t] for name, f in frames.items()} or None,
                )  # fmt: skip
            writer.end_episode(truncated=not terminated)
        except DatasetError as e:  # a full disk or a stuck writer must not stop the robot's session
            writer.discard_episode()
            self.recording_failed.add(writer.root.name)
            log.error("%s: recording to %s stopped: %s (the learner still gets every transition)", self.id,
                      writer.root, e)  # fmt: skip

    def _writer(self, mode: str) -> RecorderProcess | None:
        """<run>/episodes/<actor id>: the episodes this actor learns from (or, evaluating only, its evaluation
        episodes); a learning actor's evaluations go to <actor id>-eval, apart from its training data."""
        name = self.id if mode == "explore" or self.link is None else f"{self.id}-eval"
        return None if name in self.recording_failed else self.writers.get(name)

    def _start_recorders(self, spec) -> None:
        """One recording process per dataset this actor writes, started now: it takes seconds to be ready, which
        the handshake and the wait for weights cover (`_recorders_ready`)."""
        if not self.session.get("record_episodes", True):
            return
        names = [self.id]
        if self.link is not None and int(self.session.eval_episodes) > 0:
            names.append(f"{self.id}-eval")
        features = dataset_features(
            spec.state_dim,
            spec.action_dim,
            spec.state_names or None,  # the layout, for `dataset check robot=`
            extra=camera_features(self.frame_shapes),
            capture_time=True,
        )
        for name in names:
            self.writers[name] = RecorderProcess(
                self.run_dir / "episodes" / name, round(spec.fps), features, self.cfg.task.description,
                robot_type=spec.robot,
            )  # fmt: skip

    def _recorders_ready(self) -> None:
        for name, writer in self.writers.items():
            try:
                writer.wait_ready()
            except DatasetError as e:  # the session goes on without this record
                self.recording_failed.add(name)
                log.error("%s: not recording to %s: %s", self.id, writer.root, e)

    def _log_episode(self, r: EpisodeResult) -> None:
        lat = latency_summary(r.latencies_ms) if r.latencies_ms else {}
        self.metrics.log(
            self.env_steps,
            "actor",
            **{
                M.EPISODE_SUCCESS: float(r.success),
                M.EPISODE_RETURN: r.ret,
                M.EPISODE_LENGTH: r.length,
                M.EPISODE_INTERVENTIONS: r.interventions,
                "policy/latency_p99_ms": lat.get("p99_ms", 0.0),
                # The driver's own loop cadence since it started (meaningful in real-time mode).
                **{f"driver/{k}": v for k, v in (self.last_loop or {}).items() if isinstance(v, int | float)},
                # (metrics are numbers: the mode as one, for the report)
                "driver/realtime": int((self.last_loop or {}).get("mode") == "realtime"),
                "weights/version": self.link.weights_version,
                # lock-step: a function of the env steps alone (learner pace), whatever the machine's speed
                "learner/updates_seen": r.learner_updates,
            },
            actor=self.id,  # several robots feed one learner: the report and live status show each one's
        )
        log.info(
            "%s episode %d: success=%s return=%.2f length=%d env_steps=%d weights=v%d",
            self.id,
            self.episodes,
            r.success,
            r.ret,
            r.length,
            self.env_steps,
            self.link.weights_version,
        )

    # ---- robot ----
    def _reset(self, seed: int):
        before = self.robot_episode
        self.robot.reset(seed=seed)
        deadline = time.monotonic() + STALL_S * 4
        while time.monotonic() < deadline and not self.stop.is_set():
            obs = self.robot.recv_obs(timeout_s=0.2)
            if obs is not None and obs.step == 0 and obs.episode > before:
                self.robot_episode = obs.episode
                return obs
        raise TimeoutError(
            f"the driver did not reset within {STALL_S * 4:.0f} s: is `expo-robot driver` running?"
        )

    def _chunk_t0(self, obs) -> float:
        """When the chunk's first step is due: the tick after the observation it answers (obs.t is a tick of the
        driver's grid). In real time, if the driver has moved on since (it republishes while idle), the first tick
        of that grid after the driver's latest time, so that no step of the chunk is past when it arrives."""
        latest = self.robot.latest
        if self.robot.spec.mode == "realtime" and latest is not None and latest.episode == obs.episode:
            return next_tick(obs.t, latest.stamp, self.dt)
        return obs.t + self.dt

    def _next_obs(self, last_step: int):
        deadline = time.monotonic() + STALL_S
        replan_at = time.monotonic() + 3 * self.dt if self.robot.spec.mode == "realtime" else math.inf
        while time.monotonic() < deadline:
            if self.stop.is_set():
                raise EpisodeAborted("session stopped")
            obs = self.robot.recv_obs(timeout_s=min(0.2, self.dt))
            if obs is None or not obs.fresh:
                latest = self.robot.latest  # recv_obs returns fresh steps only; the driver's state is here
                if latest is not None and latest.safety.get("state") in ("estop", "safe_state"):
                    raise EpisodeAborted(f"{latest.safety['state']}: {latest.safety.get('reason', '')}")
                if time.monotonic() > replan_at:
                    raise ReplanNeeded
                continue
            self.robot_episode = max(self.robot_episode, obs.episode)
            if obs.step == last_step + 1:
                return obs
        raise EpisodeAborted(f"no step from the driver for {STALL_S:.0f} s")

    # ---- learner pacing ----
    def _wait_for_learner(self) -> None:
        """Lock-step: let the learner catch up, so results do not depend on machine speed. A working learner
        announces itself every STATUS_EVERY_S however long its updates take; only a silent one (dead, unreachable)
        is lost, and then `session.on_learner_loss` decides: continue on the last weights, or hold the robot."""
        if self.robot.spec.mode != "lockstep":
            return
        lag = int(self.session.max_policy_lag_steps)
        while not self.stop.is_set():
            self.link.poll()
            if not self._learner_answers():
                if self.session.on_learner_loss == "continue":
                    self.unpaced_decisions += 1
                    return
                time.sleep(0.05)  # hold: no chunk is sent, the driver holds the robot
                continue
            if self.link.backlog() <= lag and self.link.unreceived() <= 0:
                return
            time.sleep(0.005)

    def _learner_answers(self) -> bool:
        """Whether the learner is alive; says once when it is lost (and what the actor does), and when it is back."""
        if self.link.alive:
            if self.learner_lost_at is not None:
                log.warning(
                    "%s: the learner answers again after %.1f s; pacing resumes (%d decisions were taken without "
                    "waiting for it)",
                    self.id, time.monotonic() - self.learner_lost_at, self.unpaced_decisions,
                )  # fmt: skip
                self.learner_lost_at = None
            return True
        if self.learner_lost_at is None:
            self.learner_lost_at = time.monotonic() - self.link.silent_s
            then = (
                "acting on its last weights without waiting for it (session.on_learner_loss=continue): from "
                "now on the updates per env step depend on machine speed"
                if self.session.on_learner_loss == "continue"
                else "holding the robot until it is back (session.on_learner_loss=hold)"
            )
            log.warning(
                "%s: learner lost: no status for %.1f s (session.learner_timeout_s=%g; a working learner sends "
                "one every %g s), %d env steps untrained; %s",
                self.id, self.link.silent_s, self.link.timeout_s, STATUS_EVERY_S, self.link.backlog(), then,
            )  # fmt: skip
        return False

    def _wait_for_learner_to_finish(self) -> None:
        """The budget is spent: the learner must store every batch (a restarting learner, slow to start on a loaded
        machine, gets `session.final_store_timeout_s`; what it still lacks then is named, never dropped quietly); in
        lock-step it also does every update they earned and we load the weights of the last one (waited for as long
        as it answers), so the evaluation after does not depend on machine speed."""
        lockstep = self.robot.spec.mode == "lockstep"
        t0, store_timeout_s = time.monotonic(), float(self.session.final_store_timeout_s)
        while not self.stop.is_set():
            self.link.poll()
            waiting_for_updates = lockstep and self._learner_answers()
            if waiting_for_updates and self.link.caught_up():
                self._load_weights()
                log.info(
                    "%s: the learner finished the budget's %d updates (waited %.1f s)",
                    self.id, int(self.link.status.get("updates", 0)), time.monotonic() - t0,
                )  # fmt: skip
                return
            stored = self.link.unreceived() <= 0
            if not waiting_for_updates and (stored or time.monotonic() - t0 > store_timeout_s):
                break
            time.sleep(0.05)
        if (missing := self.link.unreceived()) > 0:
            log.error(
                "%s: the learner did not receive the last %d transition batches within %.0f s "
                "(raise session.final_store_timeout_s, or check the learner is running)",
                self.id,
                missing,
                float(self.session.final_store_timeout_s),
            )

    def close(self) -> None:
        for writer in self.writers.values():
            try:
                writer.close()
            except DatasetError as e:  # already reported; the robot and the learner link still close
                log.error("%s: %s", self.id, e)
        self.robot.close()
        if self.link is not None:
            self.link.close()
        self.metrics.close()


def main(cfg: DictConfig, words: list[str]) -> int:
    """`expo-robot actor`: run episodes until the env-step budget is spent (or SIGINT/SIGTERM)."""
    run_dir = make_run_dir(cfg, "actor")
    scheduling.apply(cfg.runtime, "actor")  # priority and threads: one (the step is small; more add jitter)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    actor = Actor(cfg, run_dir, cfg.get("actor_id"), stop)
    try:
        actor.run()
    finally:
        actor.close()
    return 0
