"""Mixed precision: which parts of a face model stay in float32.

Under ``trainer.precision=bf16-mixed`` (or ``16-mixed``) Lightning runs the step under autocast. The
trunk's convolutions gain from it; the embedding tail (``fc`` -> ``features``), the quality heads,
the margin heads' cosines and logits, and the losses do not, and lose accuracy (the originals run
``fc`` on ``x.float()`` outside autocast; MagFace and SER-FIQ are known to break in half precision;
reference pitfalls). :func:`full_precision` switches autocast off for such a block.
"""

from __future__ import annotations

import contextlib

import torch


def full_precision(like: torch.Tensor | torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off on ``like``'s device type (tensors inside stay float32
    when their inputs are cast with ``.float()``); a no-op on devices without autocast (``meta``)."""
    device_type = like.device.type if isinstance(like, torch.Tensor) else torch.device(like).type
    # is_autocast_available is a builtin that torch 2.11's dynamo cannot trace: under torch.compile it
    # broke the backbone's graph at its tail (a resumed frame that recompiled at every call, seen on an
    # H100). A traced backbone runs on a real device, so the check is only needed eagerly.
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
