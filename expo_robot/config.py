"""Hydra composition for every sub-command, and the per-run output folder."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from expo_robot.config_checks import check_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("robot", "cameras", "task", "agent", "teleop", "safety", "runtime", "session")


class ConfigError(ValueError):
    """A config or override the operator gave is wrong; the message says what to do."""


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _explain(overrides: list[str], error: Exception) -> str:
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0]
        if "=" not in item:
            return f"override '{item}' has no '=': write key=value (e.g. agent=rlpd)"
        if key in GROUPS and key.split(".")[0] == key:
            value = item.split("=", 1)[1]
            if value not in group_options(key):
                return f"unknown {key} '{value}'; valid choices: {', '.join(group_options(key))}"
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"{first}\n  config groups: {', '.join(GROUPS)}"
        "\n  top-level keys: see configs/config.yaml; use +key=value to add a new key"
    )


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose configs/config.yaml with command-line overrides; raise ConfigError with a clear message."""
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (ConfigCompositionException, MissingConfigException, Exception) as e:  # hydra raises several types
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ConfigError(_explain(overrides, e)) from e
    return check_config(cfg)  # types and ranges (expo_robot/config_checks.py)


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
    """Create runs/<date>/<time>_<command>_<task>/ (or cfg.run_dir), write the resolved config, set up logs."""
    if cfg.get("run_dir"):
        run_dir = Path(cfg.run_dir)
    else:
        now = dt.datetime.now()
        task = cfg.task.name if "task" in cfg else "none"
        run_dir = Path(cfg.run_root) / now.strftime("%Y-%m-%d") / f"{now.strftime('%H%M%S')}_{command}_{task}"
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
