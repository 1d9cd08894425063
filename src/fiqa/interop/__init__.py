"""Released checkpoints of the original repositories, loaded strictly into fiqa modules.

    from fiqa.interop import load_released
    from fiqa.methods.released import to_face_module
    released = load_released("181952backbone.pth")          # format and depth detected from the keys
    model = to_face_module(released)                         # a FaceModule: forward -> FaceOutput

Formats: ``arcface_torch`` (iResNet), ``arcface_torch_mbf``, ``arcface_torch_vit``, ``crfiqa``,
``magface``, ``adaface``, ``qgface``, ``eqface`` (see :mod:`fiqa.interop.formats`; the table of
released files: ``docs/released_models.md``). ``fiqa.methods.released.to_face_module`` gives a model that
carries its input convention (``model.input_convention``), so ``fiqa.quality.score(images, model)`` feeds it correctly.
Files are read with ``weights_only=True`` unless ``trust_checkpoint=True``.
"""

from fiqa.interop.checkpoints import (
    CheckpointMismatchError,
    KeyMap,
    UntrustedCheckpointError,
    load_mapped,
    read_checkpoint,
)
from fiqa.interop.formats import FORMATS, Released
from fiqa.interop.load import convert_released, detect_format, load_released

__all__ = [
    "FORMATS",
    "CheckpointMismatchError",
    "KeyMap",
    "Released",
    "UntrustedCheckpointError",
    "convert_released",
    "detect_format",
    "load_mapped",
    "load_released",
    "read_checkpoint",
]
