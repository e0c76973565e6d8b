"""The driver loop with the fake robot in-process: chunk timing, newest-wins, episodes, e-stop, watchdog, handshake."""

import threading
import time
from collections import Counter

import numpy as np
import pytest
from driver_helpers import make_cfg, observer, running_driver, wait_for

from drivers.clock import FakeClock
from drivers.server import Driver
from expo_robot.config import load_config
from expo_robot.transport import EStopLatchedError, HandshakeError, PeerTimeoutError, RobotClient
from expo_robot.transport.keys import curve_keys
from expo_robot.transport.sockets import Publisher, Pusher, address, free_tcp_ports
from expo_robot.transport.wire import Message, encode, read_header, write_header

pytestmark = pytest.mark.timeout(60)
A = np.array([0.1, 0.0, 0.0, 1.0], np.float32)


def chunk(n: int, action=A) -> np.ndarray:
    return np.tile(np.asarray(action, np.float32), (n, 1))


def test_lockstep_executes_every_due_step_in_order(tmp_path):
    cfg = make_cfg(tmp_path)
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as robot:
        spec = robot.connect(10)
        assert (spec.state_dim, spec.action_dim, spec.mode, spec.fps) == (21, 4, "lockstep", 10.0)
        obs = robot.reset(seed=3, wait_s=30)
        assert obs.step == 0 and obs.fresh and not obs.action.any()
        actions = chunk(5) * np.array([1, 1, 1, 1], np.float32)
        actions[:, 1] = np.linspace(0, 0.2, 5)
        robot.send_chunk(actions, t0=obs.t + 0.1, chunk_id=7)  # the convention: answer obs.t at the next tick
        got = [robot.recv_obs(5.0) for _ in range(5)]
        assert [o.step for o in got] == [1, 2, 3, 4, 5]
        assert [o.t for o in got] == pytest.approx([obs.t + 0.1 * i for i in range(1, 6)])
        np.testing.assert_allclose([o.action for o in got], actions, atol=1e-6)
        assert all(o.chunk_id == 7 and o.safety["state"] == "ok" for o in got)
        np.testing.assert_allclose(driver.robot.sent, actions, atol=1e-6)  # what the "motors" got
        assert robot.recv_obs(0.3) is None  # chunk done: lock-step waits, nothing else executes

        # steps whose slot is already over are skipped, never replayed
        last = got[-1]
        robot.send_chunk(chunk(6), t0=last.t + 0.1 - 0.3, chunk_id=8)  # 3 steps late
        late = [robot.recv_obs(5.0) for _ in range(3)]
        assert [o.step for o in late] == [6, 7, 8] and robot.recv_obs(0.3) is None
        assert late[-1].counters["steps_skipped"] == 3 and len(driver.robot.sent) == 8
        loop = late[-1].loop
        assert (
            loop["mode"] == "lockstep" and loop["max_robot_step_ms"] > 0
        )  # each step is timed in lock-step too


def test_reset_without_waiting_delivers_step_zero_through_recv_obs(tmp_path):
    cfg = make_cfg(tmp_path)
    with running_driver(cfg), RobotClient(cfg.runtime) as robot:
        robot.connect(10)
        first = robot.reset(seed=1, wait_s=30)
        assert robot.reset(seed=2) is None  # the agreed form: the command only
        obs = robot.recv_obs(5.0)
        assert (obs.episode, obs.step, obs.fresh) == (first.episode + 1, 0, True)


def test_realtime_newest_chunk_wins(tmp_path):
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=20")
    with running_driver(cfg), RobotClient(cfg.runtime) as robot:
        robot.connect(10)
        obs = robot.reset(wait_s=30)
        robot.send_chunk(chunk(100), t0=obs.t + 0.1, chunk_id=1)
        first = [robot.recv_obs(2.0) for _ in range(3)]
        assert all(o.chunk_id == 1 for o in first)
        robot.send_chunk(chunk(100, [-0.1, 0.0, 0.0, 1.0]), t0=first[-1].t + 0.05, chunk_id=2)
        o = wait_for(lambda: (x := robot.recv_obs(1.0)) is not None and x.chunk_id == 2 and x, 3.0, "chunk 2")
        np.testing.assert_allclose(o.action, [-0.1, 0.0, 0.0, 1.0], atol=1e-6)
        assert o.counters["chunks_superseded"] == 1
        loop = o.loop
        assert loop["mode"] == "realtime" and loop["target_ms"] == 50.0 and loop["ticks"] > 0
        assert 30.0 < loop["period_ms"] < 90.0  # measured cadence is published (loose: the machine is shared)


def test_episode_end_holds_until_reset(tmp_path):
    cfg = make_cfg(tmp_path, "task.max_episode_steps=3")
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as robot:
        robot.connect(10)
        obs = robot.reset(seed=1, wait_s=30)
        robot.send_chunk(chunk(5), t0=obs.t + 0.1, chunk_id=1)
        got = [robot.recv_obs(5.0) for _ in range(3)]
        assert got[-1].truncated and got[-1].safety["state"] == "episode_end"
        assert robot.recv_obs(0.3) is None and len(driver.robot.sent) == 3
        robot.send_chunk(chunk(5), t0=got[-1].t + 0.1, chunk_id=2)  # ignored: the episode is over
        assert robot.recv_obs(0.3) is None
        new = robot.reset(seed=2, wait_s=30)
        assert (new.episode, new.step, new.safety["state"]) == (obs.episode + 1, 0, "ok")


def test_estop_latches_until_explicit_clear(tmp_path):
    cfg = make_cfg(tmp_path)  # the operator's console: only its key may clear the e-stop over the socket
    with running_driver(cfg) as driver, RobotClient(cfg.runtime, role="operator") as robot:
        robot.connect(10)
        obs = robot.reset(wait_s=30)
        robot.estop("operator pressed the key")
        latest = wait_for(
            lambda: (o := robot.latest_obs(0.1)) and o.safety["state"] == "estop" and o, 3, "e-stop"
        )
        assert "operator pressed the key" in latest.safety["reason"]
        robot.send_chunk(chunk(3), t0=obs.t + 0.1, chunk_id=1)
        assert robot.recv_obs(0.5) is None and driver.robot.sent == []
        with pytest.raises(EStopLatchedError):
            robot.reset(wait_s=0.5)
        robot.clear_estop()
        wait_for(lambda: (o := robot.latest_obs(0.1)) and o.safety["state"] == "ok", 3, "e-stop cleared")
        obs = robot.reset(wait_s=30)
        robot.send_chunk(chunk(2), t0=obs.t + 0.1, chunk_id=2)
        assert robot.recv_obs(3.0).step == 1 and len(driver.robot.sent) >= 1
        assert latest.safety["counters"]["estop"] == 1


def test_silent_policy_means_hold_then_safe_state(tmp_path):
    cfg = make_cfg(tmp_path, "safety.watchdog_safe_state_s=0.6")
    with running_driver(cfg) as driver, observer(cfg) as obs_sub:
        with RobotClient(cfg.runtime) as robot:
            robot.connect(10)
            robot.reset(wait_s=30)
        # the client is gone (no heartbeats): hold, then the safe state
        states = []
        deadline = time.monotonic() + 5
        while "safe_state" not in states and time.monotonic() < deadline:
            msg = obs_sub.recv(0.2)
            if msg is not None and msg.type == "obs":
                states.append(msg.meta["safety"]["state"])
        assert "hold" in states and states[-1] == "safe_state"
        assert states.index("hold") < states.index("safe_state")
        assert driver.robot.safe_states == 1
        with RobotClient(
            cfg.runtime
        ) as robot:  # a restarted policy is picked up; a reset leaves the safe state
            robot.connect(10)
            assert robot.reset(wait_s=30).safety["state"] == "ok"


@pytest.mark.timeout(60)
def test_restarted_driver_is_picked_up_without_restarting_the_client(tmp_path):
    cfg = make_cfg(tmp_path, "runtime.heartbeat_s=0.1")
    with RobotClient(cfg.runtime) as robot:
        with running_driver(cfg):
            first = robot.connect(10).driver_id
            robot.reset(seed=1, wait_s=30)
        with running_driver(cfg):  # same ports, new process state
            wait_for(
                lambda: robot.latest_obs(0.1) is not None and robot.driver_restarts == 1, 10, "the new driver"
            )
            assert robot.spec.driver_id != first
            obs = robot.reset(seed=2, wait_s=30)
            robot.send_chunk(chunk(2), t0=obs.t + 0.1, chunk_id=1)
            assert robot.recv_obs(5.0).step == 1


def test_client_rebuilds_its_sockets_when_the_driver_goes_silent_and_drops_stale_commands(tmp_path):
    cfg = make_cfg(tmp_path, "runtime.heartbeat_s=0.1", "runtime.rebuild_after_s=1.0")
    with RobotClient(cfg.runtime) as robot:
        with running_driver(cfg):
            robot.connect(10)
            robot.reset(seed=1, wait_s=30)
        for seed in (5, 6, 7):  # commands for a driver that is gone: queued by the socket ...
            robot.reset(seed=seed)
        wait_for(lambda: robot.recv_obs(0.2) is None and robot.rebuilds >= 1, 10, "a socket rebuild")
        assert robot.stats()["rebuilds"] >= 1
        with running_driver(cfg) as second:  # ... and dropped with it: the new driver never runs them
            wait_for(
                lambda: robot.latest_obs(0.1) is not None and robot.driver_restarts == 1, 10, "the new driver"
            )
            time.sleep(2.0)  # (without the rebuild the queued resets arrive within this: measured, episode 3)
            assert second.episode == 0  # its own start-up reset only: none of the queued ones ran
            obs = robot.reset(seed=2, wait_s=30)
            robot.send_chunk(chunk(2), t0=obs.t + 0.1, chunk_id=1)
            assert robot.recv_obs(5.0).step == 1


def test_late_subscriber_gets_latest_observation_while_idle(tmp_path):
    cfg = make_cfg(tmp_path, "runtime.heartbeat_s=0.1")
    with running_driver(cfg), observer(cfg) as obs_sub:
        time.sleep(0.3)  # join well after step 0 was published
        msg = wait_for(
            lambda: (m := obs_sub.recv(0.2)) is not None and m.type == "obs" and m, 5, "an observation"
        )
        assert msg.meta["step"] == 0 and msg.meta["episode"] == 0


def test_handshake_mismatch_names_the_field(tmp_path):
    cfg = make_cfg(tmp_path)
    with running_driver(cfg):
        with pytest.raises(HandshakeError, match=r"action_dim is 4 on the driver, expected 7"):
            RobotClient(cfg.runtime, expected={"action_dim": 7}).connect(10)
        with pytest.raises(HandshakeError, match="fps"):
            RobotClient(cfg.runtime, expected={"fps": 30.0, "state_dim": 21}).connect(10)
        with RobotClient(cfg.runtime, expected={"robot": "fake", "state_dim": 21, "mode": "lockstep"}) as ok:
            assert ok.connect(10).robot == "fake"


def test_protocol_version_mismatch_fails_at_handshake(tmp_path):
    cfg = make_cfg(tmp_path)
    frames = encode("spec", meta={"state_dim": 21, "action_dim": 4, "fps": 10.0, "mode": "lockstep"})
    header = read_header(frames[0])
    header["v"] = 99
    with Publisher(address(cfg.runtime, "obs"), curve=curve_keys(cfg.runtime)) as fake_driver:
        stop = threading.Event()

        def spam() -> None:
            while not stop.wait(0.02):
                fake_driver.sock.send_multipart([write_header(header)])

        t = threading.Thread(target=spam, daemon=True)
        t.start()
        try:
            with pytest.raises(HandshakeError, match=r"protocol_version.*99"):
                RobotClient(cfg.runtime).connect(5)
        finally:
            stop.set()
            t.join()


def test_missing_driver_is_a_timeout_error_not_a_hang():
    obs, cmd = free_tcp_ports(2)
    cfg = load_config([f"runtime.obs_port={obs}", f"runtime.cmd_port={cmd}"])
    t = time.monotonic()
    with pytest.raises(PeerTimeoutError, match=r"no robot driver answered at tcp://127\.0\.0\.1"):
        RobotClient(cfg.runtime).connect(timeout_s=0.5)
    assert time.monotonic() - t < 3.0


def test_waiting_for_a_starting_driver_connects_late_and_stops_early(tmp_path):
    """connect_when_up: what `eval` and `record` do while their driver process starts."""
    cfg = make_cfg(tmp_path)
    client = RobotClient(cfg.runtime)
    t = time.monotonic()
    with pytest.raises(PeerTimeoutError):  # nobody there: the whole wait, then the error
        client.connect_when_up(0.5)
    assert 0.5 <= time.monotonic() - t < 3.0

    def exited() -> None:
        raise ConnectionError("the driver exited with code 1")

    with pytest.raises(ConnectionError, match="exited"):  # the starter saw its process die: at once
        client.connect_when_up(30, exited)
    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while waiting
        client.connect_when_up(30, stop=stop)

    done = threading.Event()

    def start_late() -> None:
        time.sleep(1.0)
        with running_driver(cfg):
            done.wait(30)

    threading.Thread(target=start_late, daemon=True).start()
    try:
        assert client.connect_when_up(30).robot == "fake"
    finally:
        done.set()
        client.close()


def test_realtime_step_selection_with_a_fake_clock(tmp_path):
    """Exact pacing: step k is due at t0 + k/fps (+- half a period); past steps are skipped, never replayed."""
    cfg = make_cfg(tmp_path, "robot.mode=realtime")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()
    try:
        client = "c"
        actions = np.tile(A, (10, 1))
        actions[:, 0] = np.arange(1, 11) / 10  # step k carries x = (k + 1) / 10, so we can tell them apart
        driver._handle(Message("heartbeat", 0, 0.0, {"client": client}, {}))
        meta = {"t0": 100.5, "chunk_id": 1, "client": client}
        driver._handle(Message("chunk", 1, 0.0, meta, {"actions": actions}))
        executed = []
        for t in (100.2, 100.5, 100.53, 100.62, 100.93, 101.41, 101.52, 102.0):
            clock.t = t
            driver._handle(Message("heartbeat", 0, 0.0, {"client": client}, {}))
            driver._tick()
            executed.append(driver.step)
        # k = the step whose time t0 + k/fps is nearest (within half a period)
        #  t:       100.2 100.5 100.53 100.62 100.93 101.41 101.52 102.0
        #  due k:   none  0     0(done) 1     4      9      over   over
        assert executed == [0, 1, 1, 2, 3, 4, 4, 4]
        np.testing.assert_allclose([a[0] for a in driver.robot.sent], [0.1, 0.2, 0.5, 1.0], atol=1e-6)
        assert driver.counters["steps_skipped"] == 2 + 4  # k=2,3 then k=5..8
    finally:
        driver.close()


def taking(clock: FakeClock, seconds: float, method):
    """`method` (a robot's, a socket's) as one whose call takes `seconds` on the fake clock."""

    def slow(*args, **kwargs):
        result = method(*args, **kwargs)
        clock.advance(seconds)
        return result

    return slow


def test_realtime_answer_to_a_slow_step_is_due_at_the_next_tick(tmp_path):
    """A step that takes most of a period (a loaded simulator) must not push the policy's answer a tick late: obs.t
    is the scheduled time of the tick that stepped, so t0 = obs.t + 1/fps is the next tick and every tick runs."""
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=10")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()
    driver.robot.send = taking(clock, 0.07, driver.robot.send)  # 0.7 of a period
    try:
        executed = []
        for tick in range(12):
            clock.t = driver.deadline.next_t + 0.002  # ticks fire a little late, as real ones do
            driver._handle(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
            if tick % 4 == 0:  # the policy answers the newest observation with a 4-step chunk
                meta = {"t0": driver.state_time() + 0.1, "chunk_id": tick, "client": "c"}
                driver._handle(Message("chunk", tick, 0.0, meta, {"actions": chunk(4)}))
            driver.spin_once()
            executed.append(driver.step)
        assert executed == list(range(1, 13)) and driver.counters["steps_skipped"] == 0
        assert driver.state_time() == pytest.approx(
            driver.tick_t
        )  # on the tick grid, not after the slow step
    finally:
        driver.close()


def test_realtime_steps_after_a_slow_reset_are_stamped_after_it(tmp_path):
    """A reset that ends after a scheduled tick restarts the tick grid: the episode's first step is stamped one period
    after the reset's observation, never before it (the recorded capture times of an episode only increase)."""
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=10")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()
    driver.robot.reset = taking(clock, 0.08, driver.robot.reset)  # ends at 100.13, after the tick at 100.1
    try:
        clock.t = 100.05
        driver._handle(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
        driver._reset_episode(seed=1)
        reset_t = driver.state_time()
        assert reset_t == pytest.approx(100.13)
        meta = {"t0": reset_t + 0.1, "chunk_id": 1, "client": "c"}  # the policy's answer: the next tick
        driver._handle(Message("chunk", 1, 0.0, meta, {"actions": chunk(4)}))
        clock.t = max(clock.t, driver.deadline.next_t + 0.002)
        driver._handle(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
        driver.spin_once()
        assert driver.step == 1 and driver.state_time() == pytest.approx(reset_t + 0.1)
    finally:
        driver.close()


def test_realtime_cadence_counts_no_overrun_across_a_reset(tmp_path):
    """A reset restarts the tick grid, so the gap from the last tick before it to the first after it is the reset's
    time plus a period, not a late tick; a tick more than a period late within a grid is still an overrun."""
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=10")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()

    def tick(late: float = 0.002) -> None:
        clock.t = driver.deadline.next_t + late
        driver._handle(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
        driver.spin_once()

    try:
        for _ in range(3):
            tick(late=0.0)
        clock.t = (
            driver.deadline.next_t - 0.001
        )  # a reset just before a tick: the next one is a period after it
        driver._reset_episode(seed=1)
        for _ in range(3):
            tick()  # the first 0.201 s after the last tick before the reset
        assert (driver.loop.ticks, driver.loop.overruns) == (4, 0)
        tick(late=0.15)
        assert driver.loop.overruns == 1
    finally:
        driver.close()


def test_realtime_overruns_are_put_down_to_the_robot_a_late_wakeup_or_the_loop(tmp_path):
    """The driver times the device's own step, its own work and how late it ran after it was free to: an overrun
    after a step that alone took longer than a period is the robot's; one where the idle loop ran more than a period
    after its tick was due is a late wake-up (the CPU was not given to it); the rest are the loop's own work."""
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=10")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()
    send, publish = driver.robot.send, driver.pub.send
    try:
        for i in range(10):
            # tick 6 wakes up late although the robot was quick
            clock.t = max(clock.t, driver.deadline.next_t + (0.15 if i == 6 else 0.002))
            driver._handle(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
            if i == 0:
                meta = {"t0": driver.state_time() + 0.1, "chunk_id": 1, "client": "c"}
                driver._handle(Message("chunk", 1, 0.0, meta, {"actions": chunk(16)}))
            driver.robot.send = taking(clock, 0.25 if i == 3 else 0.01, send)  # step 3 takes 2.5 periods
            driver.pub.send = taking(clock, 0.25 if i == 8 else 0.0, publish)  # tick 8: 2.5 periods
            driver.spin_once()
        driver.chunk = None
        for _ in range(2):  # held ticks: no step to time
            clock.t = driver.deadline.next_t + 0.002
            driver._handle(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
            driver.spin_once()
        loop = driver.loop.summary()
        assert (
            driver.step == 10 and driver.counters["steps_skipped"] == 2 + 1 + 2
        )  # each overrun lost the steps it was late for
        assert (loop["overruns"], loop["robot_overruns"], loop["wakeup_overruns"]) == (3, 1, 1)
        assert loop["max_wakeup_late_ms"] == pytest.approx(150.0, abs=3.0)
        assert loop["max_robot_step_ms"] == pytest.approx(250.0)
        assert loop["robot_step_ms"] == pytest.approx(
            1000 * (0.25 + 9 * 0.01) / 10
        )  # per step: the held ticks left out
    finally:
        driver.close()


def test_realtime_command_handling_counts_as_the_loops_work_only_when_it_holds_up_a_tick(tmp_path):
    """A slow command handled before the tick is due did not delay the tick: a late tick after it is a late wake-up.
    A command whose handling runs past the due time delays the tick itself: the loop's own work."""
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=10")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()
    queue: list[Message] = []
    driver.inbox.recv = lambda timeout_s=0.0: queue.pop(0) if queue else None
    handle = driver._handle

    def tick(late: float, handled_at: float | None = None, handling_s: float = 0.0) -> None:
        due = driver.deadline.next_t
        if handled_at is not None:  # a command arrives at due + handled_at and takes handling_s to handle
            clock.t = due + handled_at
            driver._handle = taking(clock, handling_s, handle)
            queue.append(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
            driver._pump(0.0)
            driver._handle = handle
        clock.t = max(clock.t, due + late)
        queue.append(Message("heartbeat", 0, 0.0, {"client": "c"}, {}))
        driver.spin_once()

    try:
        tick(0.002)
        tick(0.002)
        tick(0.13, handled_at=-0.05, handling_s=0.04)  # handled before due; then woken 130 ms late
        loop = driver.loop.summary()
        assert (loop["overruns"], loop["wakeup_overruns"]) == (1, 1)
        assert loop["max_wakeup_late_ms"] == pytest.approx(130.0)
        tick(0.002, handled_at=0.0, handling_s=0.25)  # handled from the due time on, for 2.5 periods
        loop = driver.loop.summary()
        assert (loop["overruns"], loop["wakeup_overruns"], loop["robot_overruns"]) == (2, 1, 0)
    finally:
        driver.close()


@pytest.mark.timeout(120)
def test_panda_in_real_time_paces_steps_at_the_control_rate(tmp_path):
    cfg = make_cfg(tmp_path, "robot=sim_panda", "robot.mode=realtime")
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as robot:
        assert robot.connect(60).mode == "realtime"
        obs = robot.reset(seed=0, wait_s=30)
        robot.send_chunk(chunk(8), t0=obs.t + 0.1, chunk_id=1)
        got = [robot.recv_obs(3.0) for _ in range(8)]
        assert [o.step for o in got] == list(range(1, 9))
        gaps = np.diff([o.t for o in got])
        assert abs(gaps.mean() - 0.1) < 0.03 and np.all(gaps > 0.02), gaps  # one step per period, wall clock
        assert robot.recv_obs(0.5) is None  # chunk done: hold, no further steps
        assert driver.counters["steps_executed"] == 8


@pytest.mark.timeout(60)
def test_curve_encrypted_driver_accepts_only_authorised_policies(tmp_path):
    import zmq.auth

    for name in ("server", "client", "rogue"):
        (tmp_path / name).mkdir()
        zmq.auth.create_certificates(tmp_path / name, name)
    keys = {
        "server_public_key_file": str(tmp_path / "server" / "server.key"),
        "server_secret_key_file": str(tmp_path / "server" / "server.key_secret"),
        "client_public_key_file": str(tmp_path / "client" / "client.key"),
        "client_secret_key_file": str(tmp_path / "client" / "client.key_secret"),
        "authorized_clients_dir": str(tmp_path / "client"),
    }
    cfg = make_cfg(tmp_path)
    cfg.runtime.curve = (
        keys  # what runtime.curve holds on a real deployment (each side needs only its own keys)
    )
    with running_driver(cfg):
        with RobotClient(cfg.runtime) as robot:
            assert robot.connect(10).robot == "fake"
            assert robot.reset(seed=0, wait_s=10).step == 0
        rogue = {**keys, "client_secret_key_file": str(tmp_path / "rogue" / "rogue.key_secret")}
        rogue_rt = {**cfg.runtime, "curve": rogue}
        with pytest.raises(PeerTimeoutError):
            RobotClient(rogue_rt).connect(1.0)
        plain_rt = {**cfg.runtime, "curve": None}
        with pytest.raises(PeerTimeoutError):
            RobotClient(plain_rt).connect(1.0)


# ---- hostile values (issue 14): well-formed commands the driver must not act on ----
def chunk_meta(t0=0.1, chunk_id=1, client="hostile"):
    return {"t0": t0, "chunk_id": chunk_id, "client": client}


HOSTILE = [  # (type, meta, actions, reason the driver drops it for)
    ("chunk", chunk_meta(t0=1e308), chunk(3), "t0"),  # crashed the driver (math.floor of an infinity)
    ("chunk", chunk_meta(t0=-1e308), chunk(3), "t0"),
    ("chunk", chunk_meta(t0=1e6), chunk(3), "t0"),  # would hold the robot for 11 days of virtual time
    ("chunk", chunk_meta(chunk_id=-2), chunk(3), "chunk_id"),  # the operator's id: no disguise as teleop
    ("chunk", chunk_meta(chunk_id=2**64 - 1), chunk(3), "chunk_id"),
    ("chunk", chunk_meta(), chunk(0), "chunk_empty"),
    ("chunk", chunk_meta(client=""), chunk(3), "client"),
    ("heartbeat", {"client": "x" * 129}, None, "client"),
    ("cmd", {"op": "reset", "client": "h", "seed": -1}, None, "seed"),  # crashed the driver (numpy's seed)
    ("cmd", {"op": "reset", "client": "h", "seed": 2**32}, None, "seed"),
    ("cmd", {"op": "reset", "client": "h", "seed": 2**64 - 1}, None, "seed"),
    ("cmd", {"op": "reset", "client": "h", "seed": 1.5}, None, "seed"),
    ("cmd", {"op": "reset", "client": "h", "seed": True}, None, "seed"),
    ("cmd", {"op": "reset", "client": "h", "seed": "3"}, None, "seed"),
    ("cmd", {"op": "launch", "client": "h"}, None, "op"),
]


def test_hostile_values_are_counted_by_reason_and_dropped(tmp_path):
    import zmq

    cfg = make_cfg(tmp_path)
    ctx = zmq.Context()
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as robot:
        robot.connect(10)
        first = robot.reset(seed=0, wait_s=30)
        # an authorised client's socket (its key is in the allow-list), used raw to send what RobotClient refuses
        push = Pusher(address(cfg.runtime, "cmd"), curve=curve_keys(cfg.runtime), ctx=ctx).sock
        for msg_type, meta, actions, _ in HOSTILE:
            push.send_multipart(encode(msg_type, {"actions": actions} if actions is not None else {}, meta))
        push.send_multipart(encode("heartbeat", meta={"client": "h"}, seq=-1))  # counters never go negative
        wait_for(lambda: driver.inbox.counters["invalid"] >= len(HOSTILE) + 1, 10, "the driver to drop them")
        want = Counter(reason for *_, reason in HOSTILE) + Counter(["seq"])
        assert {r: driver.inbox.counters[f"invalid.{r}"] for r in want} == dict(want)
        # nothing of them was acted on: no step, no new episode; and the counts are published by reason
        assert driver.robot.sent == [] and driver.episode == first.episode
        obs = wait_for(
            lambda: (o := robot.latest_obs(0.1)) and "inbox.invalid.t0" in o.counters and o, 5, "obs"
        )
        assert obs.counters["inbox.invalid.t0"] == 3 and obs.counters["inbox.invalid.seed"] == 6
        with pytest.raises(ValueError, match=r"seed must be in 0\.\.2\*\*32-1"):  # said at the client already
            robot.reset(seed=-1)
        with pytest.raises(ValueError, match="chunk_id"):
            robot.send_chunk(chunk(2), t0=first.t + 0.1, chunk_id=-2)
        # alive and serving: the largest legal seed, then a chunk
        obs = robot.reset(seed=2**32 - 1, wait_s=30)
        robot.send_chunk(chunk(2), t0=obs.t + 0.1, chunk_id=2**63 - 1)
        assert robot.recv_obs(5.0).chunk_id == 2**63 - 1
    ctx.destroy(linger=0)


def test_an_estop_is_never_refused_for_its_values(tmp_path):
    """Stopping is always safe: an e-stop with an odd client id or reason still latches (its reason replaced)."""
    cfg = make_cfg(tmp_path)
    driver = Driver(cfg)
    driver.open()
    try:
        msg = Message("cmd", -1, 0.0, {"op": "estop", "client": "", "reason": {"x": 1}}, {})
        driver.inbox.check(msg)  # no WireError
        driver._handle(msg)
        assert driver.monitor.state == "estop" and driver.monitor.status.reason == "e-stop: socket command"
    finally:
        driver.close()


def test_watchdog_follows_the_chunk_sender_whatever_other_clients_do(tmp_path):
    cfg = make_cfg(tmp_path, "robot.mode=realtime", "robot.fps=10")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()

    def heartbeat(client: str) -> None:
        driver._handle(Message("heartbeat", 0, 0.0, {"client": client}, {}))

    try:
        heartbeat("actor")
        driver._handle(Message("chunk", 1, 0.0, chunk_meta(100.1, client="actor"), {"actions": chunk(50)}))
        clock.t = 100.1
        heartbeat("bystander")
        driver._tick()
        assert driver.step == 1 and driver.monitor.state == "ok"
        for _ in range(5):  # the actor is silent; another client keeps heartbeating
            clock.advance(0.05)
            heartbeat("bystander")
            driver._tick()
        assert driver.monitor.state == "hold" and "watchdog" in driver.monitor.status.reason
        assert driver.step == 1  # the actor was last heard at 100.0: no step of its chunk after 100.1
        heartbeat("actor")  # back (a hiccup, not a death): the chunk goes on
        clock.advance(0.05)
        driver._tick()
        assert driver.monitor.state == "ok"
        clock.advance(
            2.5
        )  # the actor gone for good: hold, then the safe state, the bystander notwithstanding
        heartbeat("bystander")
        driver._tick()
        assert driver.monitor.state == "safe_state" and driver.chunk is None
    finally:
        driver.close()


def test_a_flood_of_client_ids_leaves_no_table_behind(tmp_path):
    """100k unique client ids: the driver's memory and the watchdog's per-check cost do not grow with them."""
    import tracemalloc

    cfg = make_cfg(tmp_path, "robot.mode=realtime")
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()

    def watch_s(n: int = 2000) -> float:  # per check, the best of 5 runs (the machine is shared)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                driver._watch()
            runs.append((time.perf_counter() - t) / n)
        return min(runs)

    try:
        driver._handle(Message("heartbeat", 0, 0.0, {"client": "actor"}, {}))
        base_watch_s = watch_s()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            driver._handle(Message("heartbeat", i, 0.0, {"client": f"flood-{i:06d}"}, {}))
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        flood_watch_s = watch_s()
        print(
            f"100k client ids: +{grown} bytes; watchdog check {base_watch_s * 1e6:.1f} -> {flood_watch_s * 1e6:.1f} us"
        )
        assert grown < 64 * 1024  # (a table of 100k ids was +14.5 MB)
        assert flood_watch_s < 2 * base_watch_s + 1e-6
    finally:
        driver.close()


def lockstep_run(tmp_path, silent_s: dict[int, float]) -> tuple[list, int]:
    """A lock-step episode of one-step chunks on a fake clock; before step i the policy is silent for silent_s[i]
    wall seconds (a loaded machine, a learner it waits for). Returns what the motors got and the watchdog holds."""
    cfg = make_cfg(tmp_path)
    clock = FakeClock(100.0)
    driver = Driver(cfg, clock=clock)
    driver.open()
    try:
        heartbeat = Message("heartbeat", 0, 0.0, {"client": "c"}, {})
        for i in range(12):
            clock.advance(silent_s.get(i, 0.01))
            driver._tick()  # the driver's loop runs on while the policy is silent
            driver._handle(heartbeat)
            # far from the hold command: a re-armed start-up guard would ramp it
            action = [0.9 * (-1) ** i, 0.6, -0.8, 2.0]
            meta = {"t0": driver.state_time() + 0.1, "chunk_id": i, "client": "c"}
            driver._handle(Message("chunk", i, 0.0, meta, {"actions": chunk(1, action)}))
            driver._tick()
            assert driver.step == i + 1
        return [a.tolist() for a in driver.robot.sent], driver.monitor.counters["hold"]
    finally:
        driver.close()


def test_lockstep_steps_do_not_depend_on_wall_time_between_commands(tmp_path):
    """Lock-step: a policy silent long enough for a watchdog hold (but not the safe state) between two steps must
    not change what the robot executes; no virtual time passed and nothing moved, so no start-up ramp is re-armed."""
    prompt, prompt_holds = lockstep_run(tmp_path / "prompt", {})
    slow, slow_holds = lockstep_run(tmp_path / "slow", {3: 0.5, 4: 1.2, 9: 0.3})
    assert (prompt_holds, slow_holds) == (0, 3)  # the slow run really went through three holds
    assert slow == prompt
