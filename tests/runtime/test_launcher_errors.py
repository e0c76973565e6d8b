"""The launcher names why a process ended: the line of its output that says so, not only 'see driver.out'."""

from expo_robot.runtime.launcher import last_meaningful_line

TRACEBACK = """2026-01-01 10:00:00 INFO drivers.server: starting
Traceback (most recent call last):
  File "drivers/sim_env.py", line 70, in __init__
    self.env = gym.make(env_id, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
drivers.sim_env.SimUnavailableError: cannot build simulated task 'my:Env-v0' with {}: No module named 'my'
"""


def test_a_tracebacks_final_line(tmp_path):
    (tmp_path / "driver.out").write_text(TRACEBACK)
    assert last_meaningful_line(tmp_path / "driver.out").startswith(
        "drivers.sim_env.SimUnavailableError: cannot"
    )


def test_a_one_line_cli_error_before_the_shutdown_lines(tmp_path):
    out = tmp_path / "learner.out"
    out.write_text(
        "2026-01-01 10:00:00 INFO x: starting\n"
        "expo-robot learner: config error: data/x does not fit robot 'r': 'observation.state' has 5 values\n"
        "2026-01-01 10:00:01 INFO x: closed sockets\n\n"
    )
    assert last_meaningful_line(out).startswith("expo-robot learner: config error: data/x does not fit")


def test_no_error_line_gives_the_last_line_and_no_file_gives_nothing(tmp_path):
    (tmp_path / "a.out").write_text("starting\nstopped by signal 15\n")
    assert last_meaningful_line(tmp_path / "a.out") == "stopped by signal 15"
    assert last_meaningful_line(tmp_path / "missing.out") == ""


def test_an_error_log_record_without_its_time_and_logger(tmp_path):
    (tmp_path / "driver.out").write_text(
        "2026-12-04 18:50:35,009 ERROR drivers.server: driver: robot.action_low/high exceed the action space\n"
        "2026-12-04 18:50:35,020 INFO drivers.server: driver stopped\n"
    )
    assert (
        last_meaningful_line(tmp_path / "driver.out")
        == "driver: robot.action_low/high exceed the action space"
    )
