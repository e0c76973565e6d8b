"""The command-line entry point: sub-commands listed, overrides checked, clear errors, no tracebacks."""

import subprocess
import sys

import pytest

from expo_robot.cli import COMMANDS, main
from expo_robot.config import GROUPS, ConfigError, load_config, make_run_dir


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "expo_robot.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_group_names_valid_groups_without_traceback():
    out = run_cli("finetune", "nonsense_group=x")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    for group in GROUPS:
        assert group in out.stderr


def test_unknown_group_option_lists_choices(capsys):
    assert main(["finetune", "robot=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown robot 'nope'" in err and "sim_panda" in err and "sim_so101" in err


def test_overrides_compose():
    cfg = load_config(["robot=sim_so101", "seed=3"])
    assert cfg.robot.env_id == "lerobot_env_so101/SO101PickPlace-v0"
    assert cfg.seed == 3
    with pytest.raises(ConfigError):
        load_config(["no_such_key=1"])


def test_run_dir_holds_resolved_config(tmp_path):
    cfg = load_config([f"run_root={tmp_path}"])
    run_dir = make_run_dir(cfg, "finetune")
    assert run_dir.parent.parent == tmp_path
    assert run_dir.name.endswith("_finetune_sim_panda_pick_cube")  # named by robot and task
    assert (run_dir / "config.yaml").read_text().count("sim_panda") >= 1
    assert (run_dir / "finetune.log").exists()


def test_eval_takes_its_own_keys_short():
    from expo_robot.config import expand_override as _expand

    assert _expand("policy=runs/x", "eval") == "eval.policy=runs/x"
    assert _expand("episodes=5", "eval") == "eval.episodes=5"
    assert _expand("robot=sim_so101", "eval") == "robot=sim_so101"  # a group stays a group
    cfg = load_config([_expand("episodes=5", "eval")])
    assert cfg.eval.episodes == 5
