"""The keys folder: made once (also by processes starting together), private, and `expo-robot keys` around it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from expo_robot.transport.keys import client_folder, curve_keys, init_keys, public_keys, public_keys_of
from expo_robot.transport.sockets import Puller, Pusher, TransportError, close_context, free_tcp_ports
from expo_robot.transport.wire import FieldSpec, Schema

REPO = Path(__file__).resolve().parents[2]
VEC = Schema("vec", {"x": FieldSpec("float32", (3,))})


def test_first_use_makes_one_private_set_even_when_processes_race(tmp_path):
    folder = tmp_path / "keys"
    made: list[bool] = []
    threads = [threading.Thread(target=lambda: made.append(init_keys(folder))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made.count(True) == 1  # one set won; the others use it
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.glob("*.key_secret"))
    client, operator = public_keys_of(folder / "client.key"), public_keys_of(folder / "operator.key")
    assert public_keys(folder / "allowed") == {client, operator}
    assert public_keys(folder / "operators") == {operator}
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]  # no temporary folder left behind


def test_keys_readable_by_others_are_refused(tmp_path):
    folder = tmp_path / "keys"
    init_keys(folder)
    folder.chmod(0o755)
    with pytest.raises(TransportError, match="chmod 700"):
        curve_keys({"keys_dir": str(folder)})


def test_remote_hosts_never_get_keys_made_on_the_fly(tmp_path):
    with pytest.raises(TransportError, match="expo-robot keys init"):
        curve_keys({"keys_dir": str(tmp_path / "k"), "host": "127.0.0.1", "driver_host": "10.0.0.7"})
    assert not (tmp_path / "k").exists()


@pytest.mark.timeout(30)
def test_a_client_folder_for_another_machine_is_allowed_and_others_are_not(tmp_path):
    server_dir = tmp_path / "robot_pc"
    init_keys(server_dir)
    remote = client_folder(server_dir, "gpu_box")
    assert sorted(p.name for p in remote.iterdir()) == ["client.key", "client.key_secret", "server.key"]
    stranger = tmp_path / "stranger"
    init_keys(stranger)
    (port,) = free_tcp_ports(1)
    a = f"tcp://127.0.0.1:{port}"
    ctx = zmq.Context()
    try:
        with Puller(a, VEC, curve=curve_keys({"keys_dir": str(server_dir)}), ctx=ctx) as pull:
            with Pusher(a, curve=curve_keys({"keys_dir": str(stranger)}), ctx=ctx) as bad:
                bad.send("vec", {"x": np.zeros(3, np.float32)})
                assert pull.recv(0.5) is None
            with Pusher(a, curve=curve_keys({"keys_dir": str(remote)}), ctx=ctx) as good:
                good.send("vec", {"x": np.ones(3, np.float32)})
                msg = pull.recv(5.0)
        assert msg is not None and msg.sender == public_keys_of(remote / "client.key")
    finally:
        close_context(ctx)


def run_keys(folder: Path, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", "keys", *words, f"runtime.keys_dir={folder}"],
        cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_keys_command_makes_shows_and_allows(tmp_path):
    folder = tmp_path / "keys"
    out = run_keys(folder, "init")
    assert out.returncode == 0 and f"made keys in {folder}" in out.stdout, out.stderr
    assert public_keys_of(folder / "server.key") in out.stdout
    laptop = public_keys_of(Path(client_folder(tmp_path / "keys", "tmp_laptop")) / "client.key")
    other = tmp_path / "other"
    init_keys(other)
    out = run_keys(folder, "allow", str(other / "client.key"), "console", "operator")
    key = public_keys_of(other / "client.key")
    assert out.returncode == 0 and f"allowed {key} as console (operator)" in out.stdout, out.stderr
    assert key in public_keys(folder / "operators") and laptop in public_keys(folder / "allowed")
    bad = run_keys(folder, "allow", "not-a-key")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_preflight_reports_the_keys_and_what_to_do_without_them(tmp_path):
    from expo_robot.runtime.check import check_keys

    init_keys(tmp_path / "keys")
    row = check_keys({"keys_dir": str(tmp_path / "keys"), "host": "127.0.0.1"})
    assert row.ok and "2 client key(s) allowed, 1 may clear an e-stop" in row.detail
    row = check_keys({"keys_dir": str(tmp_path / "none"), "host": "0.0.0.0"})
    assert row.ok is False and "expo-robot keys init" in row.fix
