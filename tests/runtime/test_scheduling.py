"""Each process sets its own scheduling from runtime.scheduling: niceness (and its autogroup's when it leads its
session, as the launcher's processes do), the real-time policy and CPU pinning; a missing privilege is a warning, a
wrong CPU or priority an error."""

import json
import logging
import os
import subprocess
import sys

import pytest

from expo_robot.runtime import scheduling

CHILD = """
import json, os, sys
from expo_robot.runtime import scheduling
applied = scheduling.apply(json.loads(sys.argv[1]), sys.argv[2])
group = scheduling.autogroup_nice()
print(json.dumps({"applied": applied, "nice": os.getpriority(os.PRIO_PROCESS, 0), "group": group,
                  "cpus": sorted(os.sched_getaffinity(0)), "policy": os.sched_getscheduler(0)}))
"""


def _child(runtime: dict, role: str, new_session: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(runtime), role],
        capture_output=True, text=True, timeout=60, start_new_session=new_session, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_a_launched_process_lowers_its_niceness_and_its_own_sessions_group():
    got = _child({"scheduling": {"learner": {"nice": 7}}}, "learner", new_session=True)
    assert got["applied"] == {"nice": 7} and got["nice"] == 7
    if got["group"] is not None:  # the kernel shares time between sessions first: the group must rank too
        assert got["group"] == 7


def test_a_process_in_a_shared_session_leaves_the_sessions_group_alone():
    mine = scheduling.autogroup_nice()  # None where the kernel has no autogroups (CI's file is empty)
    got = _child({"scheduling": {"learner": {"nice": 7}}}, "learner", new_session=False)
    assert got["nice"] == 7 and got["group"] == mine  # the shell's (here pytest's) group is not changed


def test_no_autogroup_reads_as_none(tmp_path, monkeypatch):
    for text in ("", "garbage"):
        (tmp_path / "autogroup").write_text(text)
        monkeypatch.setattr(scheduling, "AUTOGROUP", tmp_path / "autogroup")
        assert scheduling.autogroup_nice() is None
    monkeypatch.setattr(scheduling, "AUTOGROUP", tmp_path / "missing")
    assert scheduling.autogroup_nice() is None


def test_pinning_and_roles_without_settings():
    cpu = min(os.sched_getaffinity(0))
    got = _child({"scheduling": {"actor": {"nice": None, "cpus": [cpu]}}}, "actor", new_session=True)
    assert got["applied"] == {"cpus": [cpu]} and got["cpus"] == [cpu]
    assert _child({}, "driver", new_session=True)["applied"] == {}


def test_a_cpu_the_machine_lacks_is_an_error_that_names_the_choices():
    with pytest.raises(ValueError, match=r"runtime.scheduling.actor.cpus=\[4096\] names no CPU"):
        scheduling.apply({"scheduling": {"actor": {"cpus": [4096]}}}, "actor")


def test_no_privilege_to_raise_a_priority_is_a_warning_not_a_failure(monkeypatch, caplog):
    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING):
        applied = scheduling.apply({"scheduling": {"driver": {"nice": -10}}}, "driver")
    assert applied == {"nice": os.getpriority(os.PRIO_PROCESS, 0)}
    assert "cannot set niceness -10" in caplog.text and "CAP_SYS_NICE" in caplog.text


def test_a_fifo_priority_puts_the_process_under_the_real_time_policy():
    got = _child({"scheduling": {"driver": {"fifo_priority": 10}}}, "driver", new_session=True)
    if got["applied"]["fifo_priority"] is None:  # no privilege here (the warning is tested below)
        assert got["policy"] == os.SCHED_OTHER
    else:
        assert got["applied"]["fifo_priority"] == 10 and got["policy"] == os.SCHED_FIFO
    assert (
        _child({"scheduling": {"driver": {"nice": 0}}}, "driver", new_session=True)["policy"]
        == os.SCHED_OTHER
    )


def test_fifo_without_privilege_is_a_warning_and_a_wrong_priority_an_error(monkeypatch, caplog):
    with pytest.raises(ValueError, match=r"fifo_priority=100 must be in 1..99"):
        scheduling.apply({"scheduling": {"driver": {"fifo_priority": 100}}}, "driver")

    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING):
        applied = scheduling.apply({"scheduling": {"driver": {"fifo_priority": 50}}}, "driver")
    assert applied == {"fifo_priority": None} and "cannot run under SCHED_FIFO" in caplog.text
