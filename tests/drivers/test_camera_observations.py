"""Camera frames from the driver to clients: the spec declares them, every observation carries them with a capture
time, and the client's schema takes exactly the declared images (anything else is dropped)."""

import time

import numpy as np
import pytest
from driver_helpers import make_cfg, running_driver, wait_for
from omegaconf import OmegaConf

from drivers.cameras import (
    CAMERA_TYPES,
    Camera,
    CameraError,
    CameraNotFoundError,
    CameraTimeoutError,
    Frame,
    StaleFrameError,
)
from drivers.server import Driver
from expo_robot.transport import HandshakeError, RobotClient
from expo_robot.transport.protocol import RobotSpec, client_inbox
from expo_robot.transport.sockets import Publisher, Subscriber, free_tcp_ports
from expo_robot.transport.wire import FRAME_OVERHEAD_BYTES, MAX_HEADER_BYTES, max_frame_bytes

pytestmark = pytest.mark.timeout(60)
HOLD = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
AGE_S = 0.05  # how old the fake camera's frames are when read


class FakeCamera(Camera):
    """A camera with a reader thread, as the driver sees it: frames numbered in their pixels, stale or lost on cue."""

    def __init__(self, cam_cfg, calibration_dir=None):
        self.name, self.serial = str(cam_cfg["name"]), "fake"
        self.height, self.width, self.fps, self.use_depth = (
            int(cam_cfg["height"]),
            int(cam_cfg["width"]),
            30.0,
            False,
        )
        self.connected, self.stale, self.lost, self.reads = False, False, False, 0

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self) -> None:
        self.connected = True

    def read_latest(self, max_age_s=None) -> Frame:
        if self.lost:
            raise CameraTimeoutError("no frame after 3 reconnects")
        if self.stale and max_age_s != float("inf"):
            raise StaleFrameError("newest frame is 500 ms old")
        self.reads += 1
        color = np.full((self.height, self.width, 3), self.reads % 256, np.uint8)
        return Frame(color, None, None, 0.0, "system_time", self.reads, time.monotonic() - AGE_S, "fake")

    def disconnect(self) -> None:
        self.connected = False


def sim_cfg(tmp_path, size=32):
    return make_cfg(
        tmp_path,
        "robot=sim_panda",
        "cameras=sim",
        f"cameras.list.0.height={size}",
        f"cameras.list.0.width={size}",
    )


def test_sim_driver_publishes_declared_frames_and_refuses_other_camera_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    cfg = sim_cfg(tmp_path)
    with running_driver(cfg), RobotClient(cfg.runtime) as robot:
        spec = robot.connect(30)
        assert spec.cameras == {"front": (32, 32, 3)}
        obs = robot.reset(seed=0, wait_s=30)
        frames = [obs]
        robot.send_chunk(
            np.tile(HOLD + np.array([0.5, 0, 0, 0], np.float32), (2, 1)), t0=obs.t + 0.1, chunk_id=1
        )
        frames += [robot.recv_obs(20) for _ in range(2)]
        for o in frames:
            image = o.images["front"]
            assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and 0 < image.mean() < 255
            assert o.image_time == {"front": pytest.approx(o.t)}  # a render shows the state it comes with
        assert [o.step for o in frames] == [0, 1, 2]
        assert not np.array_equal(frames[0].images["front"], frames[2].images["front"])  # the arm moved
        loop = frames[-1].loop  # the render time per frame rides with the loop's figures (into the report)
        assert loop["render_frames"] >= 3 and 0 < loop["render_ms"] <= loop["max_render_ms"]

        with pytest.raises(
            HandshakeError, match=r"cameras\.front is \(32, 32, 3\) on the driver, expected \(64, 64, 3\)"
        ):
            RobotClient(cfg.runtime, expected={"cameras": {"front": (64, 64, 3)}}).connect(10)
        with pytest.raises(HandshakeError, match=r"cameras\.wrist is absent on the driver"):
            RobotClient(
                cfg.runtime, expected={"cameras": {"front": [32, 32, 3], "wrist": [32, 32, 3]}}
            ).connect(10)
        with RobotClient(cfg.runtime, expected={"cameras": {"front": [32, 32, 3]}}) as same:
            assert same.connect(10).cameras == spec.cameras


def test_render_profiles_come_from_the_robot_config_and_change_how_frames_are_drawn(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    from drivers.sim_env import RenderProfile, SimUnavailableError, make_sim_task
    from expo_robot.config import load_config

    robot = load_config([]).robot
    fast = RenderProfile.from_config(robot.render)
    assert fast.name == "fast" and not (fast.shadows or fast.reflections or fast.skybox)
    assert fast.offscreen_samples == 0 and fast.shadow_size == 0
    assert RenderProfile.from_config(None) == RenderProfile()  # no render section: the model's own look
    with pytest.raises(
        SimUnavailableError,
        match=r"profile='nope' is not defined; choose one of \['fast', 'hulls', 'quality'\]",
    ):
        RenderProfile.from_config({**robot.render, "profile": "nope"})
    with pytest.raises(SimUnavailableError, match=r"unknown keys \['shadow'\]"):
        RenderProfile.from_config({"profile": "x", "profiles": {"x": {"shadow": False}}})

    sim = make_sim_task(robot)
    try:
        sim.reset(0)
        drawn = {}
        for name in ("fast", "quality"):
            sim.use_render_profile(RenderProfile.from_config({**robot.render, "profile": name}))
            drawn[name] = sim.render("front", 24, 24)
        assert drawn["fast"].shape == drawn["quality"].shape == (24, 24, 3)
        # no skybox, no multisampling: the fast frame differs (darker background)
        assert drawn["fast"].astype(int).mean() < drawn["quality"].astype(int).mean() - 5
        times = sim.render_times.summary()
        assert times["render_frames"] == 2 and 0 < times["render_ms"] <= times["max_render_ms"]
    finally:
        sim.close()


def test_sim_camera_with_a_robot_that_is_not_simulated_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, "cameras=sim")  # robot=fake
    driver = Driver(cfg)
    with pytest.raises(CameraNotFoundError, match="robot 'fake' is not simulated: use cameras=none"):
        driver.open()
    driver.close()


def test_a_rendered_camera_is_refused_in_real_time_and_a_render_failure_is_a_camera_error(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    cfg = sim_cfg(tmp_path, 16)
    cfg.robot.mode = "realtime"
    driver = Driver(cfg)
    with pytest.raises(CameraError, match=r"robot\.mode=lockstep"):
        driver.open()
    driver.close()
    from drivers.cameras import SimCamera

    class Broken:
        def render(self, *a):
            raise RuntimeError("GL context lost")

    cam = SimCamera.__new__(SimCamera)
    cam.name, cam.camera, cam.height, cam.width, cam._task = "front", "front", 16, 16, Broken()
    with pytest.raises(
        CameraError, match="rendering failed: GL context lost"
    ):  # the driver's camera-lost path
        cam.read_latest()


def test_malformed_image_messages_are_dropped():
    inbox = client_inbox(21, 4, {"front": (8, 6, 3)})
    meta = {"t": 0.0, "episode": 0, "step": 0, "fresh": True, "safety": {}, "image_time": {"front": 0.0}}
    base = {"state": np.zeros(21, np.float32), "action": np.zeros(4, np.float32)}
    good = {**base, "image.front": np.zeros((8, 6, 3), np.uint8)}
    bad = [
        ({**base, "image.front": np.zeros((6, 8, 3), np.uint8)}, meta),  # height and width swapped
        ({**base, "image.front": np.zeros((8, 6, 3), np.float32)}, meta),  # not uint8
        (base, meta),  # the declared camera is missing
        ({**good, "image.wrist": np.zeros((8, 6, 3), np.uint8)}, meta),  # a camera the spec does not declare
        (good, {k: v for k, v in meta.items() if k != "image_time"}),  # no capture time
    ]
    (port,) = free_tcp_ports(1)
    with Publisher(f"tcp://127.0.0.1:{port}") as pub, Subscriber(f"tcp://127.0.0.1:{port}", inbox) as sub:
        wait_for(lambda: pub.send("obs", good, meta) and sub.recv(0.05), 10, "subscription")
        for arrays, m in bad:
            pub.send("obs", arrays, m)
        pub.send("obs", good, {**meta, "step": 1})
        msg = sub.recv(5)
        assert msg.meta["step"] == 1 and msg.arrays["image.front"].shape == (8, 6, 3)
        stats = sub.stats()
    assert stats["invalid"] == 5
    assert {k: stats.get(f"invalid.{k}") for k in ("shape", "dtype", "missing_field", "extra_field", "meta")} == {
        "shape": 1, "dtype": 1, "missing_field": 1, "extra_field": 1, "meta": 1,
    }  # fmt: skip


def test_fake_robot_with_a_device_camera_stale_then_lost(tmp_path, monkeypatch):
    monkeypatch.setitem(CAMERA_TYPES, "test_fake", f"{__name__}:FakeCamera")
    cfg = make_cfg(tmp_path)
    OmegaConf.update(cfg, "cameras.list", [{"name": "front", "type": "test_fake", "height": 4, "width": 5}])
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as robot:
        assert robot.connect(10).cameras == {"front": (4, 5, 3)}
        cam = driver.rig.cameras["front"]
        obs = robot.reset(wait_s=10)
        assert obs.images["front"].shape == (4, 5, 3)
        # a device frame's capture time: its host receipt time on the driver clock (the clock of t and stamp)
        assert obs.image_time["front"] == pytest.approx(obs.stamp - AGE_S, abs=0.02)
        cam.stale = True
        robot.send_chunk(np.tile(HOLD, (2, 1)), t0=obs.t + 0.1, chunk_id=1)
        stale = [robot.recv_obs(10) for _ in range(2)][-1]
        assert stale.counters["camera.front.stale"] >= 1
        assert (
            stale.images["front"][0, 0, 0] == cam.reads % 256
        )  # the newest frame there is, published anyway
        cam.lost = True
        robot.send_chunk(np.tile(HOLD, (2, 1)), t0=stale.t + 0.1, chunk_id=2)
        stopped = wait_for(
            lambda: (o := robot.latest_obs(0.1)) is not None and o.safety.get("state") == "estop" and o,
            10,
            "e-stop",
        )
        assert (
            "camera front lost" in str(stopped.safety.get("reason"))
            and stopped.counters["camera.front.lost"] >= 1
        )
    assert not cam.connected  # released with the driver


def test_without_cameras_the_spec_message_is_unchanged():
    spec = RobotSpec(1, "fake", 21, 4, (-1.0,) * 4, (1.0,) * 4, 10.0, "lockstep", 256, 0.5, "abc")
    assert "cameras" not in spec.to_meta() and RobotSpec.from_meta(spec.to_meta()) == spec
    with_cam = RobotSpec(**{**spec.__dict__, "cameras": {"front": (4, 5, 3)}})
    assert RobotSpec.from_meta(with_cam.to_meta()).cameras == {"front": (4, 5, 3)}
    assert "state_names" not in spec.to_meta()  # unknown layout: the spec of an earlier release
    named = RobotSpec(**{**spec.__dict__, "state_dim": 2, "state_names": ("x", "y")})
    assert (
        RobotSpec.from_meta(named.to_meta()) == named
    )  # recorders store them: `dataset check robot=` reads them


def test_socket_frame_limits_come_from_the_robot_spec_cameras_included(tmp_path, monkeypatch):
    """zmq.MAXMSGSIZE: the driver's command socket takes no frame over the largest header or chunk; a client's
    observation socket, once it knows the spec, none over the largest camera frame (and still gets those)."""
    monkeypatch.setitem(CAMERA_TYPES, "test_fake", f"{__name__}:FakeCamera")
    cfg = make_cfg(tmp_path)
    OmegaConf.update(
        cfg, "cameras.list", [{"name": "front", "type": "test_fake", "height": 240, "width": 320}]
    )
    with running_driver(cfg) as driver, RobotClient(cfg.runtime) as robot:
        assert (
            driver.inbox.sock.maxmsgsize == MAX_HEADER_BYTES + FRAME_OVERHEAD_BYTES
        )  # chunks: 4 KiB at most
        assert driver.pub.sock.maxmsgsize == MAX_HEADER_BYTES  # subscriptions
        spec = robot.connect(10)
        assert robot._sub.sock.maxmsgsize == 240 * 320 * 3 + FRAME_OVERHEAD_BYTES
        assert (
            max_frame_bytes(client_inbox(spec.state_dim, spec.action_dim, spec.cameras))
            == 240 * 320 * 3 + 1024
        )
        assert robot.reset(seed=0, wait_s=10).images["front"].shape == (240, 320, 3)
