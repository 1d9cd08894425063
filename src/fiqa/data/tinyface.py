"""TinyFace 1:N identification test set (Cheng et al. 2018), the AdaFace / QGFace protocol.

Layout (``val=[tinyface]``, under ``<paths.data_dir>/tinyface``)::

    aligned_pad_0.1_pad_high/          # the aligned 112x112 release (``aligned=`` another name)
        Probe/<id>_<n>.jpg             # 3,728 probes (lit.)
        Gallery_Match/<id>_<n>.jpg     # 4,443 mates of the probes' identities (lit.)
        Gallery_Distractor/...         # 153,428 distractors (lit.), any names, sub-folders allowed

Only the aligned folders are read: the role of an image is the top folder it lies in, which is
what the original's per-folder listing of ``tinyface/Testing_Set`` gives (it maps each original to
its aligned file by basename). The ``.mat`` files are not needed.

- Image order: a walk of the three folders (in the order above sorted by name: Gallery_Distractor,
  Gallery_Match, Probe), directories and files **sorted** at every level, keeping ``.jpg``, ``.jpeg``
  and ``.png`` (any case). The original uses the raw ``os.walk`` order, which depends on the file
  system; the metrics do not depend on the order (each image keeps its role and label), so a sorted
  walk only makes ``index`` -> file reproducible across machines.
- Keys are basenames without extension and must be unique across the three folders (the original
  maps features by key); a duplicate is an error naming both files.
- Label: ``int(basename.split('_')[0])`` for Probe and Gallery_Match (``1_3.jpg`` -> 1); distractors
  get :data:`fiqa.eval.identification.DISTRACTOR` (-100).

``targets()`` -> ``{"labels": (N,) int64, "is_probe": (N,) bool}``: the gallery is every non-probe
image (matches and distractors), as the protocol ``fiqa.eval.protocols_lq.tinyface`` expects.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fiqa.data.images import read_rgb, to_square

__all__ = ["ROLES", "TINYFACE_EXTENSIONS", "TinyFace", "list_tinyface"]

#: The three folders of the release and their role code (0 probe, 1 gallery match, 2 distractor).
ROLES = {"Probe": 0, "Gallery_Match": 1, "Gallery_Distractor": 2}
TINYFACE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DISTRACTOR_LABEL = -100  # = fiqa.eval.identification.DISTRACTOR (not imported: readers stay apart from eval)


def _walk_images(top: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        out.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if os.path.splitext(f)[1].lower() in TINYFACE_EXTENSIONS
        )
    return out


def list_tinyface(aligned_dir: str | os.PathLike, name: str = "tinyface") -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, labels int64, roles int8)`` of an aligned TinyFace release (see the module doc)."""
    aligned_dir = Path(aligned_dir)
    paths: list[str] = []
    labels: list[int] = []
    roles: list[int] = []
    seen: dict[str, str] = {}
    for folder in sorted(ROLES):
        top = aligned_dir / folder
        if not top.is_dir():
            raise FileNotFoundError(
                f"val={name}: folder {top} not found (expected {sorted(ROLES)} under {aligned_dir})"
            )
        files = _walk_images(top)
        if not files:
            raise ValueError(f"val={name}: no .jpg/.jpeg/.png images under {top}")
        for path in files:
            key = os.path.splitext(os.path.basename(path))[0]
            if key in seen:
                raise ValueError(
                    f"val={name}: image key {key!r} is not unique: {seen[key]} and {path} (the protocol matches "
                    f"images by basename without extension across {sorted(ROLES)})"
                )
            seen[key] = path
            if ROLES[folder] == 2:
                label = DISTRACTOR_LABEL
            else:
                try:
                    label = int(key.split("_")[0])
                except ValueError:
                    label = -1
                if label < 0:
                    raise ValueError(
                        f"val={name}: {path}: cannot read the identity from the file name (expected "
                        f"'<id>_<n>.jpg' with a non-negative integer id, e.g. '1_3.jpg')"
                    )
            paths.append(path)
            labels.append(label)
            roles.append(ROLES[folder])
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(roles, dtype=np.int8)


class TinyFace:
    """The TinyFace test set from ``<root>/<aligned>/{Probe,Gallery_Match,Gallery_Distractor}``.

    Yields ``(uint8 RGB, label (-100 for distractors), {"index": i})``; images that are not
    ``image_size`` square are resized (bilinear)."""

    def __init__(
        self,
        root: str | os.PathLike,
        aligned: str = "aligned_pad_0.1_pad_high",
        image_size: int = 112,
        name: str = "tinyface",
    ):
        self.root, self.name, self.image_size = Path(root), name, int(image_size)
        self.aligned_dir = self.root / aligned
        if not self.aligned_dir.is_dir():
            raise FileNotFoundError(
                f"val={name}: aligned TinyFace folder {self.aligned_dir} not found. Expected "
                f"{aligned}/{{Probe,Gallery_Match,Gallery_Distractor}}/ under {self.root} (set paths.data_dir=DIR "
                f"or FIQA_DATA=DIR; the set lives in <data_dir>/{self.root.name}, the folder name is "
                f"val.{name}.dataset.aligned)"
            )
        self.paths, self.labels, self.roles = list_tinyface(self.aligned_dir, name)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = to_square(read_rgb(self.paths[i]), self.image_size)
        return img, int(self.labels[i]), {"index": i}

    def targets(self) -> dict:
        return {"labels": self.labels, "is_probe": self.roles == ROLES["Probe"]}

    def __repr__(self) -> str:
        roles = getattr(self, "roles", np.zeros(0))  # also when __init__ failed (a traceback's repr)
        counts = {k: int(np.count_nonzero(roles == v)) for k, v in ROLES.items()}
        return f"TinyFace({str(self.aligned_dir)!r}, {counts})"
