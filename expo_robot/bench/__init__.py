"""Benchmarks: `expo-robot bench NAME`. Each writes benchmarks/results/NAME.json (or the `result_name` its document
names, for a partial profile) with the command that made it."""

from __future__ import annotations

import importlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

# name -> "module:function(cfg) -> dict". The function returns the JSON document (with a `summary`).
BENCHMARKS = {
    "learning": "expo_robot.bench.learning:run",
    "transport": "expo_robot.bench.transport:run",
    "policy": "expo_robot.bench.policy:run",
    "learner": "expo_robot.bench.learner:run",
    "render": "expo_robot.bench.render:run",
    "threads": "expo_robot.bench.threads:run",
}
RESULTS_DIR = Path("benchmarks/results")


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, doc: dict, results_dir: Path = RESULTS_DIR) -> Path:
    doc = {
        "command": "expo-robot " + shlex.join(sys.argv[1:]),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **doc,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def main(cfg: DictConfig, words: list[str]) -> int:
    if not words or words[0] not in BENCHMARKS:
        print(
            f"expo-robot bench: name one of {', '.join(BENCHMARKS)} (e.g. 'expo-robot bench transport')",
            file=sys.stderr,
        )
        return 2
    module, func = BENCHMARKS[words[0]].split(":")
    run = getattr(importlib.import_module(module), func)
    doc = run(cfg, words[1:])
    path = write_result(doc.pop("result_name", words[0]), doc)
    print(json.dumps(doc.get("summary", {}), indent=2))
    print(f"results written to {path}")
    return 0
