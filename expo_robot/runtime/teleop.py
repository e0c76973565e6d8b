"""`expo-robot teleop`: drive the robot (the simulator by default) with a teleop device, no recording. Also the
operator loop that `expo-robot record` builds on.

    expo-robot teleop teleop=keyboard                 # keys: see configs/teleop/keyboard.yaml
    expo-robot teleop teleop=scripted teleop.episodes=3

The driver runs in a child process with the device inside its loop (drivers/teleop.py), so every command passes the
driver's safety layer and nothing done here (saving episodes, drawing the status) can delay a control step; the
child dies with this process (SIGTERM on parent death). This loop is an ordinary client of the driver's sockets. It follows the executed
steps, turns operator keys (success, failure, re-record, quit) and episode ends into decisions, and resets the scene
for the next episode at once. What happens with each step and episode is the `EpisodeSink`'s business (record.py
writes a dataset; teleop only counts).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from expo_robot.config import ConfigError, make_run_dir
from expo_robot.observe.live import LiveStatus
from expo_robot.runtime.scheduling import die_with_parent
from expo_robot.transport.protocol import EStopLatchedError, PeerTimeoutError
from expo_robot.transport.robot_client import Observation, RobotClient

log = logging.getLogger(__name__)
RESET_WAIT_S = 30.0


class TeleopConfigError(ConfigError):
    """teleop/record was started without a usable device; the message says which to pick."""


@dataclass
class EpisodeEnd:
    reason: str  # success | failure | terminated | truncated | safety | rerecord | quit
    success: bool = False
    truncated: bool = False  # ended by a limit rather than by the task or the operator
    safety_stop: bool = False

    @property
    def keep(self) -> bool:
        return self.reason not in ("rerecord", "quit")


class EpisodeSink(Protocol):
    def start(self, obs: Observation) -> None: ...

    def step(self, prev: Observation, obs: Observation) -> None: ...

    def end(self, end: EpisodeEnd) -> None: ...

    def done(self) -> bool: ...


class CountingSink:
    """`expo-robot teleop`: counts episodes and successes, stops after teleop.episodes (0 = until quit)."""

    def __init__(self, episodes: int):
        self.limit, self.episodes, self.successes, self.steps = episodes, 0, 0, 0

    def start(self, obs: Observation) -> None:
        pass

    def step(self, prev: Observation, obs: Observation) -> None:
        self.steps += 1

    def end(self, end: EpisodeEnd) -> None:
        if end.keep:
            self.episodes += 1
            self.successes += int(end.success)

    def done(self) -> bool:
        return 0 < self.limit <= self.episodes


def operator_cfg(cfg: DictConfig) -> DictConfig:
    """The config teleop/record run with: the driver loop in teleop.mode, at teleop.fps when set."""
    if cfg.teleop.type in (None, "none"):
        raise TeleopConfigError(
            "no teleop device configured: add teleop=keyboard (or teleop=scripted, teleop=gamepad, "
            "teleop=so101_leader)"
        )
    cfg.robot.mode = str(cfg.teleop.mode)
    if cfg.teleop.get("fps"):
        cfg.robot.fps = float(cfg.teleop.fps)
    return cfg


def driver_process(cfg: dict) -> None:
    """Child process entry: `expo-robot driver` (with the operator's device) until SIGTERM/SIGINT; it logs to
    driver.log in the same run folder."""
    die_with_parent()  # (no setsid here, unlike finetune's children: the keyboard reads this terminal)
    from drivers.server import main as driver_main  # imported here: the parent never builds a simulator

    sys.exit(driver_main(OmegaConf.create(cfg), []))


class OperatorLoop:
    """The driver process plus the client loop that follows its steps; `run(sink)` until done, quit or stop."""

    def __init__(
        self,
        cfg: DictConfig,
        stop: threading.Event | None = None,
        live: Any = None,
        run_dir: Path | None = None,
    ):
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.live = live
        if run_dir is not None:
            cfg.run_dir = str(run_dir)  # the driver writes its log and config into the same folder
        # spawn, not fork: MuJoCo/EGL and torch state do not survive a fork
        self._proc = multiprocessing.get_context("spawn").Process(
            target=driver_process, args=(OmegaConf.to_container(cfg, resolve=True),), name="driver"
        )
        self.client = RobotClient(cfg.runtime)
        self._seen_keys: dict[str, int] = {}
        self.seed = int(cfg.teleop.seed)
        self.loop_stats: dict = {}

    def _check_driver(self) -> None:
        if not self._proc.is_alive():
            raise ConnectionError(f"the driver process exited (code {self._proc.exitcode}); see driver.log")

    def __enter__(self) -> OperatorLoop:
        self._proc.start()
        timeout = float(self.cfg.teleop.start_timeout_s)
        try:
            self.client.connect_when_up(timeout, self._check_driver, self.stop)
        except PeerTimeoutError:
            self._stop_driver()
            raise TimeoutError(f"the driver did not start within {timeout:.0f} s; see driver.log") from None
        except BaseException:  # (Ctrl-C, a driver that exited): no driver process outlives this
            self._stop_driver()
            raise
        self._keys(self.client.latest)  # keys counted before we started are not ours
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self._stop_driver()

    def _stop_driver(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()  # SIGTERM: safe state, then a clean exit
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            log.error("the driver did not stop within 30 s; killing it")
            self._proc.kill()
            self._proc.join(5)

    # ---- operator keys ----
    def _keys(self, obs: Observation | None) -> list[str]:
        """Keys pressed since the last call, from the driver's cumulative `operator.<key>` counters."""
        if obs is None:
            return []
        new = []
        for name, count in obs.counters.items():
            if name.startswith("operator."):
                before = self._seen_keys.get(name, 0)
                new += [name.split(".", 1)[1]] * max(0, int(count) - before)
                self._seen_keys[name] = int(count)
        return new

    # ---- episodes ----
    def run(self, sink: EpisodeSink) -> None:
        while not self.stop.is_set() and not sink.done():
            end = self.episode(sink)
            log.info("episode ended: %s", end.reason)
            if end.reason == "quit":
                return
            if end.safety_stop:
                self._wait_for_clear()
            self.seed += 1

    def episode(self, sink: EpisodeSink) -> EpisodeEnd:
        obs = self._reset()
        sink.start(obs)
        prev = obs
        while not self.stop.is_set():
            self._check_driver()
            got = self.client.recv_obs(timeout_s=0.05)
            if got is not None and got.episode == prev.episode and got.step == prev.step + 1:
                sink.step(prev, got)
                prev = got
                self._show(got)
                if got.terminated or got.truncated:
                    end = EpisodeEnd(
                        "terminated" if got.terminated else "truncated", got.success, got.truncated
                    )
                    sink.end(end)
                    return end
            end = self._decide(self._keys(self.client.latest), self.client.latest, prev)
            if end is not None:
                sink.end(end)
                return end
        end = EpisodeEnd("quit")
        sink.end(end)
        return end

    def _decide(self, keys: list[str], latest: Observation | None, prev: Observation) -> EpisodeEnd | None:
        for key in keys:
            if key in ("success", "failure", "rerecord", "quit"):
                return EpisodeEnd(key, success=key == "success")
        state = (latest.safety.get("state") if latest is not None else None) or "ok"
        if state in ("estop", "safe_state"):
            return EpisodeEnd("safety", success=False, truncated=True, safety_stop=True)
        return None

    def _reset(self) -> Observation:
        try:
            return self.client.reset(seed=self.seed, wait_s=RESET_WAIT_S)
        except EStopLatchedError:
            self._wait_for_clear()
            return self.client.reset(seed=self.seed, wait_s=RESET_WAIT_S)

    def _wait_for_clear(self) -> None:
        log.warning(
            "the e-stop is latched: press the clear_estop key (or clear_estop from a client with the operator key)"
        )
        while not self.stop.is_set():
            self._check_driver()
            latest = self.client.latest_obs(timeout_s=0.2)
            if self._keys(latest).count("quit"):
                self.stop.set()
            if latest is not None and latest.safety.get("state") not in ("estop", "safe_state"):
                return

    def _show(self, obs: Observation) -> None:
        self.loop_stats = obs.loop
        if self.live is not None:
            loop = obs.loop or {}
            period = loop.get("period_ms") or 0.0
            self.live.update(
                episode=obs.episode, step=obs.step, rate_hz=1000.0 / period if period else 0.0,
                overruns=loop.get("overruns", 0), operator="holds" if obs.intervention else "policy",
            )  # fmt: skip


def install_stop_handlers(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def main(cfg: DictConfig, words: list[str]) -> int:
    """`expo-robot teleop`: drive the robot until quit (or teleop.episodes episodes, when > 0)."""
    cfg = operator_cfg(cfg)
    run_dir = make_run_dir(cfg, "teleop")
    stop = threading.Event()
    install_stop_handlers(stop)
    sink = CountingSink(int(cfg.teleop.episodes))
    log.info("teleop: %s driving %s (%s, %.0f Hz); run folder %s", cfg.teleop.type, cfg.robot.name,
             cfg.robot.mode, float(cfg.robot.fps), run_dir)  # fmt: skip
    with (
        LiveStatus(cfg.get("live", "auto"), title="teleop") as live,
        OperatorLoop(cfg, stop, live, run_dir) as loop,
    ):
        loop.run(sink)
    log.info("teleop: %d episodes, %d successes, %d steps", sink.episodes, sink.successes, sink.steps)
    return 0
