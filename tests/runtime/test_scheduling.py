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
    assert got["applied"]["nice"] == 7 and got["nice"] == 7
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
    assert got["applied"] == {"cpus": [cpu], "threads": 1} and got["cpus"] == [cpu]
    assert _child({}, "driver", new_session=True)["applied"] == {"threads": 1}
    assert _child({}, "recorder", new_session=True)["applied"] == {}  # not a session role: nothing set


def test_a_cpu_the_machine_lacks_is_an_error_that_names_the_choices():
    with pytest.raises(ValueError, match=r"runtime.scheduling.actor.cpus=\[4096\] names no CPU"):
        scheduling.apply({"scheduling": {"actor": {"cpus": [4096]}}}, "actor")


def test_no_privilege_to_raise_a_priority_is_a_warning_not_a_failure(monkeypatch, caplog):
    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    monkeypatch.setattr(scheduling, "_set_threads", lambda n: n)  # this test process keeps its torch threads
    with caplog.at_level(logging.WARNING):
        applied = scheduling.apply({"scheduling": {"driver": {"nice": -10}}}, "driver")
    assert applied == {"nice": os.getpriority(os.PRIO_PROCESS, 0), "threads": 1}
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
    monkeypatch.setattr(scheduling, "_set_threads", lambda n: n)  # this test process keeps its torch threads
    with caplog.at_level(logging.WARNING):
        applied = scheduling.apply({"scheduling": {"driver": {"fifo_priority": 50}}}, "driver")
    assert applied == {"fifo_priority": None, "threads": 1} and "cannot run under SCHED_FIFO" in caplog.text


def test_threads_per_role_the_learner_takes_the_cpus_the_others_leave(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    runtime = {
        "scheduling": {"driver": {"threads": 1}, "actor": {"threads": 2}, "learner": {"threads": None}}
    }
    assert [scheduling.threads_for(runtime, r) for r in ("driver", "actor", "learner")] == [1, 2, 5]
    assert scheduling.thread_env(runtime, "learner") == dict.fromkeys(scheduling.THREAD_ENV, "5")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # this machine: 1 each
    assert scheduling.threads_for(runtime, "learner") == 1 and scheduling.threads_for({}, "learner") == 1
    with pytest.raises(ValueError, match=r"runtime\.scheduling\.actor\.threads=0 must be 1 or more"):
        scheduling.threads_for({"scheduling": {"actor": {"threads": 0}}}, "actor")


def test_a_process_with_torch_gets_its_roles_threads():
    code = """
import json, sys, torch
from expo_robot.runtime import scheduling
scheduling.apply(json.loads(sys.argv[1]), "learner")
print(json.dumps([torch.get_num_threads(), torch.get_num_interop_threads()]))
"""
    runtime = {"scheduling": {"learner": {"threads": 3}}}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(runtime)], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert json.loads(out.stdout) == [3, 1]
