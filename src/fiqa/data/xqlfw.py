"""XQLFW (cross-quality LFW, Knoche et al. 2021) and any set in LFW's ``pairs.txt`` format.

Layout (``val=[xqlfw]``, under ``<paths.data_dir>/xqlfw``)::

    xqlfw_pairs.txt           # LFW pairs format; line 1 is a header and is skipped
    xqlfw_aligned_112/<name>/<name>_<n:04d>.jpg

Pairs lines are whitespace-separated: ``name n1 n2`` (genuine) or ``name1 n1 name2 n2`` (impostor),
in file order; the official protocol (``fiqa.eval.verification.evaluate(distance="cosine")``) folds them
with ``KFold(10, shuffle=False)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fiqa.data.images import read_rgb, to_square

__all__ = ["LFWPairs", "XQLFW", "parse_pairs_file"]


def parse_pairs_file(
    path: str | os.PathLike, skip_header: bool = True
) -> tuple[list[tuple[str, int, str, int]], np.ndarray]:
    """``([(name1, n1, name2, n2) per pair], issame bool [P])`` of an LFW-format pairs file.

    A malformed line raises a ValueError naming the file and the line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    pairs, issame = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if (skip_header and lineno == 1) or not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) == 3:
                    pairs.append((parts[0], int(parts[1]), parts[0], int(parts[2])))
                    issame.append(True)
                elif len(parts) == 4:
                    pairs.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
                    issame.append(False)
                else:
                    raise ValueError(f"expected 3 fields (name n1 n2) or 4 (name1 n1 name2 n2), got {len(parts)}")
            except ValueError as err:
                msg = str(err) if str(err).startswith("expected") else f"an image number is not an integer ({err})"
                raise ValueError(f"{path}: line {lineno}: {msg}: {line.rstrip()!r}") from None
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs, np.asarray(issame, dtype=bool)


class LFWPairs:
    """Pairs of aligned images named ``<images>/<name>/<name>_<n:04d>.<ext>`` listed in an LFW-format file.

    Yields ``(uint8 RGB, issame of its pair, {"index": i})`` for image ``i`` = side ``i % 2`` of pair
    ``i // 2``; every image file is checked at construction (the first missing one is named)."""

    def __init__(
        self,
        root: str | os.PathLike,
        pairs: str = "pairs.txt",
        images: str = ".",
        ext: str = "jpg",
        image_size: int = 112,
        name: str = "lfw_pairs",
        skip_header: bool = True,
    ):
        self.root, self.name, self.image_size = Path(root), name, int(image_size)
        pairs_path = self.root / pairs
        if not pairs_path.is_file():
            raise FileNotFoundError(
                f"val={name}: pairs file {pairs_path} not found. Expected {pairs} and {images}/ under {self.root} "
                f"(set paths.data_dir=DIR or FIQA_DATA=DIR; the set lives in <data_dir>/{self.root.name})"
            )
        self.pairs, self.issame = parse_pairs_file(pairs_path, skip_header)
        image_dir = self.root / images
        self.paths = []
        for p, (n1, i1, n2, i2) in enumerate(self.pairs):
            for name_, num in ((n1, i1), (n2, i2)):
                path = image_dir / name_ / f"{name_}_{num:04d}.{ext}"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"val={name}: image {path} of pair {p} (line {p + 2 if skip_header else p + 1} of "
                        f"{pairs_path}) not found"
                    )
                self.paths.append(str(path))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = to_square(read_rgb(self.paths[i]), self.image_size)
        return img, int(self.issame[i // 2]), {"index": i}

    def targets(self) -> dict:
        return {"issame": self.issame}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.issame)} pairs)"


class XQLFW(LFWPairs):
    """XQLFW with its release file names (``xqlfw_pairs.txt``, ``xqlfw_aligned_112/``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        pairs: str = "xqlfw_pairs.txt",
        images: str = "xqlfw_aligned_112",
        image_size: int = 112,
    ):
        super().__init__(root, pairs, images, "jpg", image_size, name="xqlfw", skip_header=True)
