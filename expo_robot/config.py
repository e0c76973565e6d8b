"""Hydra composition for every sub-command, and the per-run output folder."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import shlex
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from expo_robot.config_checks import check_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("robot", "cameras", "task", "agent", "teleop", "safety", "runtime", "session")
# Folders of the user's own configs (same layout: robot/, task/, ...), searched after the built-in configs/:
# `expo-robot --config-dir DIR ...` or this variable (several folders separated by ':'). The CLI puts --config-dir
# here too, so the processes a command starts (driver, actor, learner) find the same configs.
CONFIG_PATH_ENV = "EXPO_ROBOT_CONFIG_PATH"


class ConfigError(ValueError):
    """A config or override the operator gave is wrong; the message says what to do."""


def user_config_dirs() -> list[Path]:
    """The user's config folders (EXPO_ROBOT_CONFIG_PATH), in search order; a missing folder is an error."""
    paths = [
        Path(d).expanduser().resolve() for d in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if d
    ]
    dirs = list(dict.fromkeys(paths))  # each folder once, in order
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(
            f"config folder(s) not found: {', '.join(missing)} (from --config-dir / {CONFIG_PATH_ENV})"
        )
    return dirs


def add_config_dirs(dirs: list[str]) -> None:
    """Put `--config-dir` folders in front of EXPO_ROBOT_CONFIG_PATH, for this process and the ones it starts."""
    old = [d for d in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if d]
    new = [str(Path(d).expanduser().resolve()) for d in dirs]
    os.environ[CONFIG_PATH_ENV] = os.pathsep.join(dict.fromkeys(new + old))


def config_search_path() -> list[Path]:
    return [CONFIG_DIR, *user_config_dirs()]


def group_options(group: str) -> list[str]:
    return sorted({p.stem for d in config_search_path() for p in (d / group).glob("*.yaml")})


def is_override(word: str) -> bool:
    """`key=value`, `+key=value`, `++key=value` and Hydra's delete `~key` (with or without a value)."""
    return "=" in word or word.startswith("~")


def split_words(args: list[str]) -> tuple[list[str], list[str]]:
    """(positional words, Hydra overrides) of a command line, in their order."""
    return [a for a in args if not is_override(a)], [a for a in args if is_override(a)]


def command_line(command: str, overrides: list[str], *extra: str, drop: tuple[str, ...] = ()) -> str:
    """The command a hint prints: this run's own overrides (less those whose key is or starts with one of `drop`),
    then `extra`, with the user's config folders, so that copied verbatim it runs on the same robot and task."""
    keep = [o for o in overrides if not o.lstrip("+~").split("=", 1)[0].startswith(("run_dir", *drop))]
    dirs = [a for d in user_config_dirs() for a in ("--config-dir", str(d))]
    return shlex.join(["expo-robot", *dirs, command, *keep, *extra])


def _searched() -> str:
    dirs = ", ".join(str(d) for d in config_search_path())
    return (
        f"\n  searched: {dirs}\n  your own configs: put <group>/<name>.yaml in a folder and pass "
        f"--config-dir FOLDER (or set {CONFIG_PATH_ENV}=FOLDER)"
    )


def _explain(overrides: list[str], error: Exception) -> str:
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0]
        if key in GROUPS and "=" in item:
            value = item.split("=", 1)[1]
            if value not in group_options(key):
                return f"unknown {key} '{value}'; valid choices: {', '.join(group_options(key))}{_searched()}"
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"{first}\n  config groups: {', '.join(GROUPS)}"
        "\n  top-level keys: see configs/config.yaml; use +key=value to add a new key (e.g. "
        "+robot.env_kwargs.x=1), ~key to delete one" + _searched()
    )


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose configs/config.yaml (+ the user's config folders) with command-line overrides; raise ConfigError with
    a clear message."""
    overrides = list(overrides or [])
    cfg = _compose(overrides)
    if "robot" not in cfg or "task" not in cfg:  # (deleted with ~robot / ~task)
        return check_config(cfg)
    check_config(cfg)  # types and ranges first (expo_robot/config_checks.py)
    _require_action_bounds(cfg.robot)
    task = robot_task(cfg, explicit=any(o.lstrip("+").startswith("task=") for o in overrides))
    return check_config(_compose([*overrides, f"task={task}"])) if task != cfg.task.get("name") else cfg


def _compose(overrides: list[str]) -> DictConfig:
    search = [f"file://{d}" for d in user_config_dirs()]
    hydra_overrides = [f"hydra.searchpath=[{','.join(search)}]"] if search else []
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=hydra_overrides + overrides)
    except (ConfigCompositionException, MissingConfigException, Exception) as e:  # hydra raises several types
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ConfigError(_explain(overrides, e)) from e


def robot_task(cfg: DictConfig, explicit: bool) -> str:
    """The task to run: a task written for a simulated env (task.env_id) runs only on a robot that simulates it. The
    default task gives way to the one task written for the robot's env; a task named on the command line that does
    not fit is an error."""
    robot, task = cfg.robot, cfg.task
    if robot.get("type") != "sim" or not task.get("env_id") or task.env_id == robot.get("env_id"):
        return task.name
    fitting = [t for t in group_options("task") if _task_env_id(t) == robot.get("env_id")]
    if len(fitting) == 1 and not explicit:
        return fitting[0]
    hint = (
        f"pass task={' or task='.join(fitting)}"
        if fitting
        else f"write a task config with env_id: {robot.get('env_id')} (README: Your own task)"
    )
    raise ConfigError(
        f"task '{task.name}' is defined on {task.env_id}, robot '{robot.name}' simulates {robot.get('env_id')}: "
        f"{hint}"
    )


def _require_action_bounds(robot: DictConfig) -> None:
    """A simulated robot's config gives its action bounds: the learner sizes the agent from them without the env."""
    if robot.get("type") == "sim" and not (robot.get("action_low") and robot.get("action_high")):
        raise ConfigError(
            f"robot '{robot.name}' needs action_low and action_high: lists within the env's action space, e.g. its "
            f"bounds: python -c \"import gymnasium as gym; print(gym.make('{robot.get('env_id')}').action_space)\""
        )


def _task_env_id(name: str) -> str | None:
    for d in config_search_path():
        if (d / "task" / f"{name}.yaml").exists():
            return OmegaConf.load(d / "task" / f"{name}.yaml").get("env_id")
    return None


def expand_override(override: str, section: str) -> str:
    """`policy=x` -> `eval.policy=x` when `policy` is a key of the command's own config section."""
    key = override.split("=", 1)[0]
    if section and "." not in key and key.isidentifier() and key in _section_keys(section):
        return f"{section}.{override}"
    return override


@functools.cache  # read once per process, not once per override
def _section_keys(section: str) -> set[str]:
    return set(OmegaConf.load(CONFIG_DIR / "config.yaml").get(section) or {})


def make_run_dir(cfg: DictConfig, command: str) -> Path:
    """Create runs/<date>/<time>_<command>_<robot>_<task>/ (or cfg.run_dir), write the resolved config, set up logs."""
    if cfg.get("run_dir"):
        run_dir = Path(cfg.run_dir)
    else:
        now = dt.datetime.now()
        robot = cfg.robot.name if "robot" in cfg else "none"
        task = cfg.task.name if "task" in cfg else "none"
        name = f"{now.strftime('%H%M%S')}_{command}_{robot}_{task}"
        run_dir = Path(cfg.run_root) / now.strftime("%Y-%m-%d") / name
    run_dir.mkdir(parents=True, exist_ok=True)
    # robot i of several shares the folder with the others: its own log and resolved config (ports, seed)
    name, config = command, "config.yaml"
    if cfg.get("robot_index") is not None:
        name = f"{command}-{cfg.robot_index}"
        config = f"config.{name}.yaml"
    (run_dir / config).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    setup_logging(run_dir / f"{name}.log", cfg.get("log_level", "INFO"))
    return run_dir


def setup_logging(log_file: Path | None, level: str = "INFO") -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
