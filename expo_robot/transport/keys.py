"""CurveZMQ keys: who may connect to the driver and the learner, and who may clear an e-stop over the network.

Every socket is CurveZMQ (authenticated and encrypted), on one machine too. The keys live in one folder, mode 0700
(runtime.keys_dir; default $EXPO_ROBOT_KEYS_DIR, else ~/.config/expo-robot/keys):

    server.key / server.key_secret      the driver's and the learner's keypair (the sockets that bind)
    client.key / client.key_secret      the policy processes' keypair (actor, eval, record, teleop)
    operator.key / operator.key_secret  the operator's console: may clear an e-stop over the socket
    allowed/                            allow-list: the public keys that may connect (client + operator at init)
    operators/                          the public keys that may clear an e-stop (operator at init)

On one machine (every host in runtime is loopback) the folder is made on first use. A run that binds or connects
beyond loopback needs a folder made on purpose (`expo-robot keys init`); `expo-robot keys client NAME` makes a
client's folder for another machine (the server's public key + the client's own keypair) and allows it.

    expo-robot keys init | show | client NAME [operator] | allow KEY_OR_FILE [NAME] [operator]  [runtime.keys_dir=DIR]
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from expo_robot.transport.sockets import CurveKeys, TransportError, is_loopback

ROLES = ("server", "client", "operator")
KEYS_HINT = "make keys with `expo-robot keys init` (README, Security)"


def default_keys_dir() -> Path:
    return Path(os.environ.get("EXPO_ROBOT_KEYS_DIR") or Path.home() / ".config" / "expo-robot" / "keys")


def keys_dir(runtime_cfg: Mapping[str, Any]) -> Path:
    configured = runtime_cfg.get("keys_dir")
    return Path(str(configured)).expanduser() if configured else default_keys_dir()


def curve_keys(runtime_cfg: Mapping[str, Any], role: str = "client") -> CurveKeys:
    """The keys every socket of this process uses: runtime.curve when given (explicit files), else the keys folder
    (made on first use when every runtime host is loopback). role client | operator picks the connecting keypair."""
    if runtime_cfg.get("curve"):
        return CurveKeys.from_config(runtime_cfg["curve"])
    folder = keys_dir(runtime_cfg)
    if not (folder / "client.key_secret").exists():
        remote = [h for h in _hosts(runtime_cfg) if not is_loopback(h)]
        if remote:
            raise TransportError(
                f"no CurveZMQ keys in {folder} and {remote[0]} is not loopback: {KEYS_HINT}, then give other "
                f"machines a client folder (`expo-robot keys client NAME`)"
            )
        init_keys(folder)
    check_private(folder)
    connecting = "operator" if role == "operator" else "client"
    return CurveKeys(
        server_public_key_file=str(folder / "server.key"),
        server_secret_key_file=str(folder / "server.key_secret"),
        client_public_key_file=str(folder / f"{connecting}.key"),
        client_secret_key_file=str(folder / f"{connecting}.key_secret"),
        authorized_clients_dir=str(folder / "allowed"),
        operator_keys_dir=str(folder / "operators"),
    )


def _hosts(runtime_cfg: Mapping[str, Any]) -> list[str]:
    return [str(runtime_cfg[k]) for k in ("host", "driver_host", "learner_host") if runtime_cfg.get(k)]


def check_private(folder: Path) -> None:
    """Secret keys only count if no other user can read them (as ssh checks ~/.ssh)."""
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise TransportError(
            f"keys folder {folder} is reachable by other users (mode {oct(st.st_mode & 0o777)}, owner uid "
            f"{st.st_uid}): `chmod 700 {folder}` as its owner"
        )


def init_keys(folder: Path) -> bool:
    """Server, client and operator keypairs plus the allow-lists in `folder`. False if it already holds keys.
    Made in a private temporary folder and renamed into place, so processes starting together agree on one set."""
    if (folder / "server.key").exists():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".keys-"))  # mode 0700
    try:
        for role in ROLES:
            _keypair(tmp, role)
        for allow_list, roles in (("allowed", ("client", "operator")), ("operators", ("operator",))):
            (tmp / allow_list).mkdir()
            for role in roles:
                shutil.copy(tmp / f"{role}.key", tmp / allow_list / f"{role}.key")
        os.rename(tmp, folder)  # atomic; fails if another process made the folder first (its keys win)
        return True
    except OSError:
        if (folder / "server.key").exists():
            return False
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def public_keys(folder: str | Path | None) -> set[str]:
    """The z85 public keys in a folder of .key files (as ZeroMQ reports them in a message's User-Id)."""
    if not folder or not Path(folder).is_dir():
        return set()
    return {k.decode() for k in zmq.auth.load_certificates(str(folder))}


def allow(folder: Path, key: str, name: str, operator: bool = False) -> Path:
    """Add a client's public key (a .key file or its 40-character z85 text) to the allow-list (and operators)."""
    z85 = _read_public_key(key)
    written = folder / "allowed" / f"{name}.key"
    for allow_list in ("allowed", "operators") if operator else ("allowed",):
        (folder / allow_list).mkdir(exist_ok=True)
        _write_public(folder / allow_list / f"{name}.key", z85)
    return written


def _read_public_key(key: str) -> str:
    if len(key) == 40 and not Path(key).exists():
        try:
            zmq.utils.z85.decode(key)
        except ValueError as e:
            raise TransportError(f"'{key}' is not a z85 CurveZMQ public key: {e}") from e
        return key
    try:
        public, _ = zmq.auth.load_certificate(key)
    except (OSError, ValueError) as e:
        raise TransportError(
            f"cannot read a public key from {key!r}: give a .key file or the 40-character key"
        ) from e
    return public.decode()


def _write_public(path: Path, z85: str) -> None:
    path.write_text(f'metadata\ncurve\n    public-key = "{z85}"\n')


def client_folder(folder: Path, name: str, operator: bool = False) -> Path:
    """A keys folder for another machine's client: the server's public key and a new keypair of its own, which
    is allowed here. Copy it to that machine and point runtime.keys_dir at it."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):  # a folder and file name
        raise TransportError(
            f"client name '{name}': use 1-64 letters, digits, _ and - (e.g. gpu_box, actor-1)"
        )
    out = folder / "clients" / name
    if out.exists():
        raise TransportError(f"{out} exists already: pick another name or delete it")
    out.mkdir(parents=True, mode=0o700)
    shutil.copy(folder / "server.key", out / "server.key")
    public, _ = _keypair(out, "client")
    if operator:  # an operator's console elsewhere: its one keypair clears e-stops too
        for suffix in (".key", ".key_secret"):
            shutil.copy(out / f"client{suffix}", out / f"operator{suffix}")
    allow(folder, str(public), name, operator)
    return out


# ---- `expo-robot keys` ----
def main(cfg: Any, words: list[str]) -> int:
    folder = keys_dir(cfg.runtime)
    action, args = (words[0], words[1:]) if words else ("show", [])
    operator = "operator" in args
    args = [a for a in args if a != "operator"]
    if action == "init":
        made = init_keys(folder)
        print(f"{'made' if made else 'kept the'} keys in {folder}")
    elif action == "client" and len(args) == 1:
        _require_keys(folder)
        out = client_folder(folder, args[0], operator)
        print(f"client folder {out}: copy it to that machine and run with runtime.keys_dir=<its path there>")
    elif action == "allow" and len(args) in (1, 2):
        _require_keys(folder)
        name = args[1] if len(args) == 2 else f"client_{len(public_keys(folder / 'allowed'))}"
        path = allow(folder, args[0], name, operator)
        print(f"allowed {public_keys_of(path)} as {name}{' (operator)' if operator else ''}")
        print("restart the driver and the learner to read the allow-list again")
    elif action != "show":
        print(
            "expo-robot keys: init | show | client NAME [operator] | allow KEY_OR_FILE [NAME] [operator]",
            file=sys.stderr,
        )
        return 2
    _require_keys(folder)
    check_private(folder)
    _show(folder)
    return 0


def _require_keys(folder: Path) -> None:
    if not (folder / "server.key").exists():
        raise FileNotFoundError(f"no keys in {folder}: {KEYS_HINT}")


def _show(folder: Path) -> None:
    print(f"server public key:   {public_keys_of(folder / 'server.key')}")
    for role in ("client", "operator"):
        if (folder / f"{role}.key").exists():
            print(f"{role + ' public key:':<21}{public_keys_of(folder / f'{role}.key')}")
    print(f"allowed to connect:  {', '.join(sorted(public_keys(folder / 'allowed'))) or 'nobody'}")
    print(f"may clear an e-stop: {', '.join(sorted(public_keys(folder / 'operators'))) or 'nobody'}")


def public_keys_of(path: Path) -> str:
    return zmq.auth.load_certificate(str(path))[0].decode()
