"""`expo-robot`: one entry point, one sub-command per workflow. Every sub-command takes Hydra overrides.

expo-robot finetune robot=sim_so101 agent=expo agent.edit.beta=0.2
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import inspect
import io
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from expo_robot.config import (
    CONFIG_PATH_ENV,
    GROUPS,
    ConfigError,
    add_config_dirs,
    expand_override,
    load_config,
    split_words,
)


@dataclass(frozen=True)
class Command:
    help: str
    target: str  # "module:function" taking (cfg, words[, overrides=]) -> exit code
    section: str = ""  # keys of this config section may be given short: `policy=x` for `eval.policy=x`
    words: str = ""  # the positional words it takes (usage); "" = overrides only, any other word is an error


# Sub-commands live in their own modules; this table is the registry (no if/elif factory).
COMMANDS: dict[str, Command] = {
    "finetune": Command(
        "EXPO fine-tune session: driver + actor + learner (sim by default)",
        "expo_robot.runtime.launcher:main",
    ),
    "eval": Command(
        "safety-stopped evaluation of a checkpoint, with a report",
        "expo_robot.runtime.evaluate:main",
        section="eval",
    ),
    "pretrain": Command(
        "imitation pretraining of the base policy on LeRobotDatasets",
        "expo_robot.runtime.pretrain:main",
        words="[DATASET ...]",
    ),
    "teleop": Command("drive the robot with a teleop device, no recording", "expo_robot.runtime.teleop:main"),
    "record": Command("record teleop demonstrations into a LeRobotDataset", "expo_robot.runtime.record:main"),
    "reward": Command(
        "train a success classifier on camera frames from labelled episodes (image-task rewards)",
        "expo_robot.runtime.reward:main",
        section="reward_classifier",
        words="DATASET ...",
    ),
    "dataset": Command(
        "dataset info|check|repair PATH, dataset schema: summary and validation of a LeRobotDataset, and the "
        "contract a dataset must meet for a robot (robot=...)",
        "expo_robot.data.dataset_cli:main",
        words="info|check|repair PATH | schema",
    ),
    "calibrate": Command(
        "calibrate a robot or camera; stored under calibration/",
        "expo_robot.runtime.calibrate:main",
        words="robot | camera [NAME ...] [charuco]",
    ),
    "check": Command(
        "preflight: devices, calibration, limits, ports, latency", "expo_robot.runtime.check:main"
    ),
    "bench": Command(
        "benchmarks: learning | transport | policy | learner | render | threads",
        "expo_robot.bench:main",
        words="learning|transport|policy|learner|render|threads ...",
    ),
    "keys": Command(
        "CurveZMQ keys: init | show | client NAME | allow KEY",
        "expo_robot.transport.keys:main",
        words="init|show|client NAME|allow KEY ...",
    ),
    "driver": Command("run only the robot driver process (multi-machine runs)", "drivers.server:main"),
    "actor": Command("run only the policy process (multi-machine runs)", "expo_robot.runtime.actor:main"),
    "learner": Command(
        "run only the learner process (multi-machine runs)", "expo_robot.runtime.learner:main"
    ),
}


CONFIG_DIR_HELP = (
    "a folder of your own configs (robot/, task/, ... as in configs/), searched after the built-in ones; "
    f"repeatable; also read from ${CONFIG_PATH_ENV} (folders separated by ':')"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expo-robot",
        description="Online RL fine-tuning of expressive robot policies with EXPO. "
        f"Config groups: {', '.join(GROUPS)} (override as group=option, key=value, +new_key=value, ~key).",
    )
    parser.add_argument("--config-dir", dest="config_dirs_top", action="append", default=[], metavar="DIR",
                        help=CONFIG_DIR_HELP)  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--config-dir", dest="config_dirs", action="append", default=[], metavar="DIR",
                       help=CONFIG_DIR_HELP)  # fmt: skip
        what = f"{cmd.words} and " if cmd.words else ""
        p.add_argument("args", nargs="*", help=f"{what}Hydra overrides (key=value, +key=value, ~key)")
    return parser


def _take_config_dirs(argv: list[str]) -> tuple[list[str], list[str]]:
    """(--config-dir folders, the other arguments): the option may stand anywhere, among the overrides too."""
    dirs, rest, it = [], [], iter(argv)
    for arg in it:
        if arg == "--config-dir":
            dirs.append(next(it, ""))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return dirs, rest


def _resolve(target: str) -> Callable[..., int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _enable_stack_dumps() -> None:
    """`kill -USR2 <pid>` prints every thread's stack: where is a process stuck? (SIGUSR1 is the driver's e-stop.)"""
    # stderr may not be a real file (e.g. captured by a test runner): then there are no dumps, nothing else changes
    with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
        faulthandler.register(signal.SIGUSR2)


def main(argv: list[str] | None = None) -> int:
    _enable_stack_dumps()
    config_dirs, argv = _take_config_dirs(sys.argv[1:] if argv is None else list(argv))
    args = _parser().parse_args(argv)  # (--config-dir stays declared there for --help)
    if "" in config_dirs:
        print("expo-robot: --config-dir needs a folder (--config-dir my_configs)", file=sys.stderr)
        return 2
    if args.command is None:
        _parser().print_help()
        return 2
    cmd = COMMANDS[args.command]
    words, overrides = split_words(args.args)
    overrides = [expand_override(a, cmd.section) for a in overrides]
    if words and not cmd.words:
        print(
            f"expo-robot {args.command}: '{words[0]}' is not an override: write key=value (e.g. robot=sim_so101), "
            f"+key=value to add a key, ~key to delete one; `expo-robot {args.command}` takes no other words",
            file=sys.stderr,
        )
        return 2
    add_config_dirs(config_dirs)  # also seen by the processes a command starts
    try:
        cfg = load_config(overrides)
        target = _resolve(cmd.target)
        takes_overrides = "overrides" in inspect.signature(target).parameters
        return int(target(cfg, words, **({"overrides": overrides} if takes_overrides else {})) or 0)
    except ConfigError as e:
        print(f"expo-robot {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, TimeoutError, FileNotFoundError, PermissionError) as e:
        # Operator-facing failures (a port in use, a missing peer or file) are one line, not a traceback.
        print(f"expo-robot {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"expo-robot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
