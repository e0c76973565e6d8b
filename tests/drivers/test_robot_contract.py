"""One contract, every robot driver: the fake twin and the simulators (real hardware would join behind a marker)."""

import numpy as np
import pytest

from drivers.robot import DeviceAlreadyConnectedError, DeviceNotConnectedError, Robot, RobotError, make_robot
from expo_robot.config import load_config


class RobotContract:
    """Mixin: subclasses give `make_robot_under_test()`."""

    def make_robot_under_test(self) -> Robot:
        raise NotImplementedError

    @pytest.fixture
    def robot(self):
        with self.make_robot_under_test() as robot:
            yield robot

    def test_use_before_connect_is_a_typed_error(self):
        robot = self.make_robot_under_test()
        for call in (robot.observe, robot.hold, lambda: robot.reset(0), lambda: robot.send(np.zeros(4))):
            with pytest.raises(DeviceNotConnectedError, match="connect"):
                call()

    def test_connect_twice_is_a_typed_error(self, robot):
        with pytest.raises(DeviceAlreadyConnectedError):
            robot.connect()

    def test_features_describe_what_it_returns(self, robot):
        ((state_shape, dtype),) = robot.observation_features.values()
        ((action_shape, _),) = robot.action_features.values()
        state = robot.reset(seed=0)
        assert state.shape == state_shape == (robot.state_dim,) and state.dtype == np.dtype(dtype)
        assert action_shape == (robot.action_dim,) == robot.action_low.shape == robot.action_high.shape
        assert np.all(robot.action_low < robot.action_high) and robot.fps > 0

    def test_send_returns_what_was_executed(self, robot):
        robot.reset(seed=0)
        action = (robot.action_low + robot.action_high) / 2
        result = robot.send(action)
        np.testing.assert_allclose(result.action, action, atol=1e-6)
        assert result.state.shape == (robot.state_dim,) and np.isfinite(result.state).all()
        assert isinstance(result.reward, float) and isinstance(result.truncated, bool)

    def test_hold_does_not_move_or_advance(self, robot):
        robot.reset(seed=0)
        robot.send(robot.hold_action((robot.action_low + robot.action_high) / 2))
        before, ee = robot.observe().copy(), robot.ee_position()
        robot.hold()
        np.testing.assert_array_equal(robot.observe(), before)
        if ee is not None:
            np.testing.assert_allclose(robot.ee_position(), ee)

    def test_hold_action_is_inside_bounds(self, robot):
        last = robot.action_high.copy()
        hold = robot.hold_action(last)
        assert np.all(hold >= robot.action_low) and np.all(hold <= robot.action_high)
        assert np.isfinite(hold).all()

    def test_delta_moves_the_end_effector_by_the_declared_step(self, robot):
        robot.reset(seed=0)
        if robot.ee_step_m is None or robot.ee_position() is None:
            pytest.skip("no end-effector kinematics")
        hold = robot.hold_action((robot.action_low + robot.action_high) / 2)
        for _ in range(3):
            robot.send(hold)  # let the simulated arm settle
        start = robot.ee_position()
        push = hold.copy()
        push[2] = 1.0  # up (away from the table)
        for _ in range(4):
            robot.send(push)
        moved = robot.ee_position() - start
        # simulated arms lag their target (and the SO-101 sags under a zero delta), so the check is loose
        assert 0.5 * 4 * robot.ee_step_m < moved[2] < 1.3 * 4 * robot.ee_step_m

    def test_disconnect_is_idempotent(self):
        robot = self.make_robot_under_test()
        robot.connect()
        robot.disconnect()
        robot.disconnect()
        assert not robot.is_connected


class TestFakeRobot(RobotContract):
    def make_robot_under_test(self) -> Robot:
        cfg = load_config(["robot=fake"])
        return make_robot(cfg.robot, cfg.task)


class TestSimPanda(RobotContract):
    def make_robot_under_test(self) -> Robot:
        cfg = load_config(["robot=sim_panda"])
        return make_robot(cfg.robot, cfg.task)


@pytest.mark.slow
class TestSimSO101(RobotContract):
    def make_robot_under_test(self) -> Robot:
        cfg = load_config(["robot=sim_so101", "task=pick_place"])
        return make_robot(cfg.robot, cfg.task)


def test_unknown_robot_type_lists_the_valid_ones():
    cfg = load_config(["robot=fake", "robot.type=nope"])
    with pytest.raises(RobotError, match="valid types: sim, fake"):
        make_robot(cfg.robot)


def test_sim_bounds_wider_than_the_simulator_are_refused():
    cfg = load_config(["robot=sim_panda", "robot.action_high=[1.0,1.0,1.0,3.0]"])
    with pytest.raises(RobotError, match="exceed the simulator's action space"):
        make_robot(cfg.robot, cfg.task).connect()
