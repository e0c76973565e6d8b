"""The command-line entry point: sub-commands listed, overrides checked, clear errors, no tracebacks."""

import os
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


# ---- words, deletes, config folders, robot/task fit (issue 20) ----
def test_a_word_that_is_not_an_override_is_an_error(capsys):
    assert main(["finetune", "robot=sim_panda", "sesion.env_steps"]) == 2
    err = capsys.readouterr().err
    assert "'sesion.env_steps' is not an override" in err and "~key" in err


def test_tilde_deletes_a_key_with_or_without_a_value():
    from expo_robot.config import split_words

    assert split_words(["info", "~eval.episodes", "x=1", "PATH"]) == (
        ["info", "PATH"],
        ["~eval.episodes", "x=1"],
    )
    assert "episodes" not in load_config(["~eval.episodes"]).eval
    assert "episodes" not in load_config(["~eval.episodes=20"]).eval


def test_unknown_option_names_the_folders_searched_and_a_user_folder_is_found(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPO_ROBOT_CONFIG_PATH", "")
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "stack.yaml").write_text(
        "name: stack\ndescription: s\nenv_id: null\nmax_episode_steps: 5\n"
    )
    assert main(["finetune", "task=stack"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'stack'" in err and "searched:" in err and "--config-dir" in err
    assert (
        main(["--config-dir", str(tmp_path), "dataset", "info"]) == 2
    )  # usage error, after the config composed
    capsys.readouterr()
    assert os.environ["EXPO_ROBOT_CONFIG_PATH"] == str(tmp_path)  # what the processes it starts inherit
    cfg = load_config(["task=stack"])
    assert cfg.task.max_episode_steps == 5
    with pytest.raises(ConfigError, match=f"searched: .*configs, {tmp_path}"):
        load_config(["robot=nope"])


def test_a_task_that_does_not_fit_the_robot_is_an_error_and_the_default_task_follows_the_robot():
    with pytest.raises(
        ConfigError, match=r"task 'pick_place' is defined on lerobot_env_so101.*pass task=pick_cube"
    ):
        load_config(["robot=sim_panda", "task=pick_place"])
    assert load_config(["robot=sim_so101"]).task.name == "pick_place"
    assert load_config(["robot=fake", "task=pick_place"]).task.name == "pick_place"  # not simulated: any task


def test_run_folders_are_named_by_robot_and_task(tmp_path):
    run_dir = make_run_dir(load_config([f"run_root={tmp_path}", "robot=sim_so101"]), "eval")
    assert run_dir.name.endswith("_eval_sim_so101_pick_place")


def test_the_pretrain_hint_reproduces_the_runs_overrides(monkeypatch):
    from expo_robot.runtime.pretrain import finetune_hint

    monkeypatch.setenv("EXPO_ROBOT_CONFIG_PATH", "")
    hint = finetune_hint(
        [
            "robot=sim_so101",
            "agent=bc",
            "session.pretrain_steps=50",
            "run_dir=runs/x",
            "+robot.env_kwargs.k=1",
        ],
        ["data/demos"],
        "runs/p/checkpoints/pretrained.pt",
    )
    assert hint.startswith("expo-robot finetune robot=sim_so101 agent=bc +robot.env_kwargs.k=1 ")
    assert "run_dir" not in hint and "session.pretrain_steps=50" not in hint
    assert hint.endswith("session.pretrained=runs/p/checkpoints/pretrained.pt session.pretrain_steps=0")
    assert "session.offline.datasets=[/" in hint  # the positional datasets, as the session's offline data


def test_config_dir_may_stand_anywhere_on_the_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPO_ROBOT_CONFIG_PATH", "")
    assert main(["dataset", "seed=1", "--config-dir", str(tmp_path), "info"]) == 2  # usage: no PATH
    assert "usage: expo-robot dataset" in capsys.readouterr().err
    assert str(tmp_path) in os.environ["EXPO_ROBOT_CONFIG_PATH"]
    assert main(["finetune", "--config-dir"]) == 2
    assert "--config-dir needs a folder" in capsys.readouterr().err
