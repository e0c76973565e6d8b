"""Checkpoints: one safetensors file with everything needed to resume (networks, optimisers, counters, buffers).

Tensors and arrays (weights, normalisation statistics, optimiser moments, random-generator states, replay buffers)
are the file's tensors; everything else (counters, the resolved config, optimiser settings, numpy's generator state)
is JSON in the file's header, where each tensor is named by its place in the state (`{"__tensor__": name}`).
Loading reads that JSON and those tensors: no pickle, so opening a checkpoint someone sent you runs none of their
code. Checkpoints written by torch.save before (`latest.pt`, `pretrained.pt`) are pickles: they load only with
`trust_checkpoint=true`, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)
FORMAT = "expo-robot-checkpoint/1"
SUFFIX = ".safetensors"
LATEST = "latest" + SUFFIX  # the newest learner state of a run (resume from it)
PRETRAINED = "pretrained" + SUFFIX  # the BC start
_LEGACY = ("latest.pt",)  # what a run folder held before safetensors
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing, unreadable or refused; the message names the file and what to do."""


def save_checkpoint(path: Path, state: dict) -> Path:
    """Atomic: written to a temporary file, then renamed, so a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors, set())
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, tmp, metadata={"format": FORMAT, "state": json.dumps(tree)})
    os.replace(tmp, path)
    return path


def checkpoint_file(path: str | Path) -> Path:
    """The file behind a checkpoint file, a run folder or its checkpoints folder (latest.safetensors, or an older
    run's latest.pt)."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in (LATEST, *_LEGACY):
                if (folder / name).is_file():
                    return folder / name
    return path


def load_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """The state save_checkpoint wrote (tensors as torch tensors, arrays as numpy arrays). An old torch.save
    checkpoint (a pickle, which can run code) is refused unless `trust` (the `trust_checkpoint=true` option)."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass a {SUFFIX} file or a run folder with checkpoints/{LATEST}"
        )
    kind = _file_kind(file)
    if kind == "pickle":
        return _load_pickle(file, trust)
    if kind != "safetensors":
        raise CheckpointError(f"{file} is not a checkpoint (neither safetensors nor torch.save)")
    try:
        with safe_open(file, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{file} is a safetensors file but not an expo-robot checkpoint (format {meta.get('format')!r})"
                )
            return _decode(json.loads(meta["state"]), f, set(f.keys()))
    except CheckpointError:
        raise
    except Exception as e:  # safetensors, json and a damaged tree raise several types
        raise CheckpointError(f"cannot read checkpoint {file}: {type(e).__name__}: {e}") from e


def _file_kind(file: Path) -> str:
    with file.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip archive, or its older raw pickle
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < file.stat().st_size:
        return "safetensors"  # an 8-byte header length, then the JSON header
    return "unknown"


def _load_pickle(file: Path, trust: bool) -> dict:
    if not trust:
        raise CheckpointError(
            f"{file} is an old torch.save checkpoint: loading it unpickles, which can run any code in it. "
            "If you made it or trust where it came from, add trust_checkpoint=true to the command"
        )
    log.warning(
        "loading %s with pickle (trust_checkpoint=true): it can run code; new checkpoints are written as %s",
        file,
        SUFFIX,
    )
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot read checkpoint {file}: {e}") from e


# ---- the state as JSON + named tensors ----
def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": _put(_cpu_tensor(value, storages), name, tensors)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _put(_array_tensor(value, name), name, tensors)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [_encode(v, f"{name}.{i}", tensors, storages) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        items = {k: _encode(v, f"{name}.{k}", tensors, storages) for k, v in value.items()}
        if all(type(k) is str and k not in _TAGS for k in items):
            return items
        if all(type(k) in (str, int) for k in items):  # e.g. an optimiser's state, keyed by parameter index
            return {"__items__": [[k, v] for k, v in items.items()]}
    raise CheckpointError(f"cannot store {name} ({type(value).__name__}) in a checkpoint")


def _cpu_tensor(t: torch.Tensor, storages: set[int]) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    ptr = t.untyped_storage().data_ptr()
    if (
        ptr in storages and t.numel()
    ):  # safetensors refuses tensors that share memory (tied or viewed weights)
        t = t.clone()
    storages.add(ptr)
    return t


def _array_tensor(a: np.ndarray, name: str) -> torch.Tensor:
    try:
        return torch.from_numpy(a if a.flags.c_contiguous else a.copy(order="C"))  # (0-d stays 0-d)
    except TypeError as e:
        raise CheckpointError(f"cannot store {name} (numpy {a.dtype}) in a checkpoint") from e


def _put(t: torch.Tensor, name: str, tensors: dict[str, torch.Tensor]) -> str:
    key, n = name, 1
    while key in tensors:  # (a dict key with a '.' in it could repeat a name)
        key, n = f"{name}#{n}", n + 1
    tensors[key] = t
    return key


def _decode(tree: Any, f, keys: set[str]) -> Any:
    if isinstance(tree, list):
        return [_decode(v, f, keys) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        (tag, value), = tree.items()  # fmt: skip
        if tag in ("__tensor__", "__ndarray__"):
            if value not in keys:
                raise CheckpointError(
                    f"the checkpoint's state names tensor {str(value)[:80]!r}, which it lacks"
                )
            t = f.get_tensor(value)
            return t if tag == "__tensor__" else t.numpy()
        if tag == "__tuple__":
            return tuple(_decode(v, f, keys) for v in value)
        if tag == "__items__":
            return {k: _decode(v, f, keys) for k, v in value}
    return {k: _decode(v, f, keys) for k, v in tree.items()}
