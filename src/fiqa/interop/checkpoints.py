"""Reading released checkpoints safely and loading them strictly through a key map.

- :func:`read_checkpoint`: ``torch.load(weights_only=True)`` always; a file that needs full
  unpickling (code execution) is refused with an error that names ``trust_checkpoint``.
- :class:`KeyMap`: prefix rules from the original's key names to our modules' names, invertible,
  so errors can name the keys as the checkpoint spells them.
- :func:`load_mapped`: routes every key of a state_dict to one target module (or to the
  explicitly dropped ones), requires a bijection with the targets' state_dicts and equal shapes,
  and only then loads. :class:`CheckpointMismatchError` lists missing, unexpected and
  mis-shaped keys (the first ten of each, with counts).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SHOW = 10  # keys listed per category in errors


class UntrustedCheckpointError(ValueError):
    """The file needs full unpickling (arbitrary code execution) to load."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the target modules one to one."""

    def __init__(
        self,
        source: str,
        target: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        mismatched: Sequence[tuple[str, tuple, tuple]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) {_first(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s) {_first(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:SHOW]]
            more = f" (+{len(self.mismatched) - SHOW} more)" if len(self.mismatched) > SHOW else ""
            parts.append(f"{len(self.mismatched)} key(s) with another shape {shown}{more}")
        super().__init__(
            f"{source}: the checkpoint does not match {target} key for key: " + "; ".join(parts) + ". Keys are "
            "named as in the checkpoint. Check format= and arch= (or pass them explicitly)."
        )


def _first(keys: Sequence[str]) -> str:
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return f"{list(keys[:SHOW])}{more}"


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=not trust_checkpoint``; clear errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"released checkpoint {str(path)!r}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        text = str(err)
        if not trust_checkpoint and "unsupported global" in text.lower():
            raise UntrustedCheckpointError(
                f"{str(path)!r} cannot be loaded with weights_only=True: it holds Python objects whose "
                f"unpickling can execute code (e.g. a Lightning checkpoint's hyper-parameters). Pass "
                f"trust_checkpoint=true only if you trust where the file comes from. Detail: {text}"
            ) from err
        hint = "" if trust_checkpoint else " (read with weights_only=True)"
        raise ValueError(f"{str(path)!r} is not a readable torch checkpoint{hint}: {text}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable torch checkpoint: {err}") from err


def is_tensor_dict(obj: Any) -> bool:
    """A non-empty mapping of str -> Tensor (a bare state_dict)."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def common_prefix(keys: Iterable[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that every key starts with (``""`` always qualifies if listed)."""
    keys = list(keys)
    for c in candidates:
        if keys and all(k.startswith(c) for k in keys):
            return c
    return None


@dataclass(frozen=True)
class KeyMap:
    """Prefix rules ``(source_prefix, target, target_prefix)``; the first matching rule wins."""

    rules: tuple[tuple[str, str, str], ...]

    def forward(self, key: str) -> tuple[str, str] | None:
        for src, target, dst in self.rules:
            if key.startswith(src):
                return target, dst + key[len(src) :]
        return None

    def inverse(self, target: str, key: str) -> str:
        """The checkpoint's name of ``target``'s ``key`` (the longest matching target prefix)."""
        best = None
        for src, t, dst in self.rules:
            if t == target and key.startswith(dst) and (best is None or len(dst) > len(best[1])):
                best = (src, dst)
        return key if best is None else best[0] + key[len(best[1]) :]


def load_mapped(
    state: Mapping[str, Tensor],
    keymap: KeyMap,
    targets: Mapping[str, nn.Module],
    *,
    source: str,
    target_name: str,
    drop: Callable[[str], bool] | None = None,
) -> list[str]:
    """Load ``state`` into ``targets`` through ``keymap``, strictly; returns the dropped keys.

    Every key of ``state`` is either dropped (``drop(key)``) or routed to exactly one target key,
    and every key of every target's state_dict receives exactly one tensor of the same shape.
    Otherwise :class:`CheckpointMismatchError` lists what is missing, unexpected or mis-shaped.
    """
    routed: dict[str, dict[str, Tensor]] = {name: {} for name in targets}
    unexpected, dropped = [], []
    for key, value in state.items():
        if drop is not None and drop(key):
            dropped.append(key)
            continue
        hit = keymap.forward(key)
        if hit is None or hit[0] not in targets:
            unexpected.append(key)
            continue
        target, tkey = hit
        if tkey in routed[target]:
            raise ValueError(f"{source}: two checkpoint keys map to {target}.{tkey} (the key map is not injective)")
        if not isinstance(value, Tensor):
            raise ValueError(f"{source}: {key!r} holds a {type(value).__name__}, not a tensor")
        routed[target][tkey] = value
    missing, mismatched = [], []
    for name, module in targets.items():
        expected = module.state_dict()
        for tkey, ref in expected.items():
            if tkey not in routed[name]:
                missing.append(keymap.inverse(name, tkey))
            elif tuple(routed[name][tkey].shape) != tuple(ref.shape):
                mismatched.append((keymap.inverse(name, tkey), tuple(routed[name][tkey].shape), tuple(ref.shape)))
        unexpected += [keymap.inverse(name, tkey) for tkey in routed[name] if tkey not in expected]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, target_name, missing, unexpected, mismatched)
    for name, module in targets.items():
        module.load_state_dict(routed[name], strict=True)
    return dropped


def stage_units(keys: Iterable[str], pattern: str) -> dict[int, list[int]]:
    """``{stage or 0: sorted unit indices}`` from keys matching ``pattern`` (groups: [stage,] unit)."""
    found: dict[int, set[int]] = {}
    rx = re.compile(pattern)
    for k in keys:
        m = rx.fullmatch(k)
        if m:
            g = [int(x) for x in m.groups()]
            stage, unit = (g[0], g[1]) if len(g) == 2 else (0, g[0])
            found.setdefault(stage, set()).add(unit)
    return {s: sorted(u) for s, u in sorted(found.items())}


def arch_depth(arch: str, table: Mapping[int, Sequence[int]], family: str) -> int:
    """The depth named by ``arch`` (its trailing number: ``iresnet100``, ``r100``, ``ir_101``)."""
    m = re.search(r"(\d+)$", str(arch))
    if m is None or int(m.group(1)) not in table:
        raise ValueError(f"arch={arch!r} is not a {family} depth; choose one of {sorted(table)}")
    return int(m.group(1))
