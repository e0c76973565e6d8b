"""Process scheduling: the robot's loop first, the policy next, the learner takes what is left.

On a small machine (2 cores here) the learner would use every cycle it is given; it must never delay a driver tick
or a policy step. Each process sets its own priority when it starts, from `runtime.scheduling.<role>`:

- `nice`: Unix niceness (-20 highest .. 19 lowest). Linux with autogroups (the default on desktop kernels and here)
  first shares CPU time between sessions, then between the threads of a session by niceness. The launcher starts each
  process in a session of its own, so a session leader also writes the value to its autogroup: niceness alone would
  not rank it against the other processes. Processes started from one shell share its session; there niceness alone
  ranks them.
- `fifo_priority`: 1-99 runs the process under SCHED_FIFO, Linux's real-time policy (ahead of every normal process:
  no time slice of a learner, a recorder or another program can delay a tick); null for the normal policy. Off by
  default; for the driver on a robot's computer. A FIFO loop that cannot keep its rate takes its core whole: Linux
  keeps 5% of each second for everything else (sched_rt_runtime_us).
- `cpus`: CPU ids to pin the process to, or null for any.
- `switch_interval_s`: how long a Python thread may hold the interpreter while another waits for it (Python's
  default 5 ms). A control loop shares its process with helper threads (heartbeats, the episode writer); each time
  its graph or a socket call hands the interpreter to one of them, it may wait this long to get it back.
- `threads`: the compute threads of the process (torch's intra-op pool, and OpenMP/BLAS pools through
  OMP_NUM_THREADS etc., which the launcher sets for each process it starts: they are read when the libraries load);
  null = the CPUs the driver and the actor leave (at least 1). Left to their defaults, torch and BLAS each start one
  thread per CPU in every process: a learner's update then takes every core the policy step needs. torch's
  inter-op pool is 1 thread in every role (nothing here runs graphs in parallel).

Raising a priority (a negative nice, a FIFO priority) needs root or CAP_SYS_NICE (or an rtprio limit); without it the process says so once and runs at its
current priority. Lowering one always works.

A control loop also must not stop for Python's garbage collector: `freeze_heap` takes what a process built at start
(imported modules, networks, sockets) out of the collector's sight. And a helper process must not outlive the one
that started it: `die_with_parent`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
AUTOGROUP = Path("/proc/self/autogroup")
ROLES = ("driver", "actor", "learner")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # read when the libraries load
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def apply(runtime_cfg: Mapping[str, Any] | None, role: str) -> dict[str, Any]:
    """Set this process's niceness and CPU set for `role` (driver, actor, learner). Call before starting threads:
    threads inherit the niceness of the thread that starts them. Returns what now holds, for the logs and metrics."""
    want = ((runtime_cfg or {}).get("scheduling") or {}).get(role) or {}
    applied: dict[str, Any] = {}
    if want.get("nice") is not None:
        applied["nice"] = _set_nice(role, int(want["nice"]))
    if want.get("fifo_priority") is not None:
        applied["fifo_priority"] = _set_fifo(role, int(want["fifo_priority"]))
    if want.get("cpus") is not None:
        applied["cpus"] = _set_cpus(role, [int(c) for c in want["cpus"]])
    if want.get("switch_interval_s") is not None:
        sys.setswitchinterval(float(want["switch_interval_s"]))
        applied["switch_interval_s"] = sys.getswitchinterval()
    if role in ROLES:
        applied["threads"] = _set_threads(threads_for(runtime_cfg, role))
    if applied:
        log.info("%s: scheduling %s", role, applied)
    return applied


def threads_for(runtime_cfg: Mapping[str, Any] | None, role: str) -> int:
    """The compute threads of `role`: its `threads`, or (null) the CPUs this process may use minus the driver's and
    the actor's threads, at least 1 (on 2 cores: 1 each)."""
    sched = (runtime_cfg or {}).get("scheduling") or {}
    want = (sched.get(role) or {}).get("threads")
    if want is not None:
        if int(want) < 1:
            raise ValueError(f"runtime.scheduling.{role}.threads={want} must be 1 or more (or null)")
        return int(want)
    others = sum(int((sched.get(r) or {}).get("threads") or 1) for r in ("driver", "actor") if r != role)
    return max(1, len(os.sched_getaffinity(0)) - others)


def thread_env(runtime_cfg: Mapping[str, Any] | None, role: str) -> dict[str, str]:
    """The environment that sizes a new process's OpenMP/BLAS pools for `role` (the launcher starts it with these)."""
    return dict.fromkeys(THREAD_ENV, str(threads_for(runtime_cfg, role)))


def _set_threads(n: int) -> int:
    """torch's pools, where this process uses torch (the driver does not import it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return n
    torch.set_num_threads(n)
    with contextlib.suppress(
        RuntimeError
    ):  # only possible before the first parallel work: a second apply() keeps it
        torch.set_num_interop_threads(1)
    return n


def _set_nice(role: str, nice: int) -> int:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        leads_its_session = os.getsid(0) == os.getpid()  # then the session's autogroup is this process's
        if leads_its_session and autogroup_nice() is not None:
            AUTOGROUP.write_text(f"{nice}\n")
    except PermissionError:
        log.warning(
            "%s: cannot set niceness %d (raising a priority needs root or CAP_SYS_NICE); running at %d: "
            "timing figures may suffer while the learner trains",
            role,
            nice,
            os.getpriority(os.PRIO_PROCESS, 0),
        )
    except OSError as e:  # no autogroup support, a read-only /proc: the process niceness still holds
        log.debug("%s: autogroup niceness not set: %s", role, e)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _set_fifo(role: str, priority: int) -> int | None:
    """SCHED_FIFO at `priority` for this thread and the threads it starts; None (and a warning) where not allowed."""
    lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
    if not lo <= priority <= hi:
        raise ValueError(
            f"runtime.scheduling.{role}.fifo_priority={priority} must be in {lo}..{hi} (or null)"
        )
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        log.warning(
            "%s: cannot run under SCHED_FIFO (needs root, CAP_SYS_NICE or an rtprio limit); running under the "
            "normal policy",
            role,
        )
        return None
    return os.sched_getparam(0).sched_priority


def autogroup_nice() -> int | None:
    """This process's autogroup niceness, or None where the kernel has no autogroups (no file, or an empty one:
    some containers and kernels booted with `noautogroup`)."""
    try:
        fields = AUTOGROUP.read_text().split()  # "/autogroup-406 nice 0"
        return int(fields[-1])
    except (OSError, IndexError, ValueError):
        return None


def _set_cpus(role: str, cpus: list[int]) -> list[int]:
    available = os.sched_getaffinity(0)
    chosen = set(cpus) & available
    if not chosen:
        raise ValueError(
            f"runtime.scheduling.{role}.cpus={cpus} names no CPU this machine has ({sorted(available)}); "
            "set CPU ids from that list or null"
        )
    os.sched_setaffinity(0, chosen)
    return sorted(chosen)


def freeze_heap() -> None:
    """Call once a real-time process has built what it keeps. A full collection then scans only what was made
    since: with torch and lerobot imported an actor holds ~400k objects, and a full collection over them took 200 ms
    here (it struck a policy step now and then: p99 73 ms in a 50 Hz session); over what the loop makes, < 1 ms."""
    gc.collect()
    gc.freeze()


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies, however it dies (a SIGKILLed launcher, recorder or actor
    must not leave a driver, learner or recording process running)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        log.debug("prctl unavailable: this process will not follow its parent's death")
