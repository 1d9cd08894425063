"""Training readers for plain files: an image folder per identity, or a list file.

* :func:`list_image_folder` / :class:`ImageFolder`: ``<root>/<identity>/<image>``; labels are the
  identity directories in sorted order (torchvision ``ImageFolder``'s rule), images sorted within.
* :func:`read_file_list` / :class:`FileList`: one ``path<sep>label`` per line, where ``<sep>`` is
  ``;`` (EQFace's ``generate_file_list.py``), a tab, or spaces. Relative paths are taken relative to
  ``root`` (default: the list file's directory). Blank lines and lines starting with ``#`` are skipped.

Every reader yields ``(uint8 HxWx3 RGB, label, {"index": i, "path": ...})`` and has ``num_classes``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fiqa.data.images import IMAGE_EXTENSIONS, read_rgb

__all__ = ["FileList", "ImageFolder", "list_image_folder", "read_file_list", "parse_list_line"]


def list_image_folder(
    root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> tuple[list[str], np.ndarray, list[str]]:
    """``(paths, labels int64, identity names)`` of ``<root>/<identity>/<image>``.

    Identities are the sub-directories of ``root`` in sorted order, so label ``k`` is the ``k``-th
    name; an identity without images is kept (its label is unused) so labels equal torchvision's."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {str(root)!r} (expected <root>/<identity>/<image>.jpg)")
    exts = tuple(e.lower() for e in extensions)
    names = sorted(d.name for d in os.scandir(root) if d.is_dir())
    if not names:
        raise ValueError(
            f"image folder {str(root)!r} has no identity sub-directories (expected <root>/<identity>/*.jpg)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        files = sorted(
            e.path for e in os.scandir(root / name) if e.is_file() and os.path.splitext(e.name)[1].lower() in exts
        )
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise ValueError(
            f"image folder {str(root)!r}: no images with extensions {list(exts)} under its {len(names)} identities"
        )
    return paths, np.asarray(labels, dtype=np.int64), names


def parse_list_line(line: str) -> tuple[str, int]:
    """``'a/b.jpg;3'``, ``'a/b.jpg\\t3'`` or ``'a/b.jpg 3'`` -> ``('a/b.jpg', 3)``.

    The separator is the last ``;`` if there is one, else the last tab, else the last run of spaces
    (so paths with spaces work with ``;`` and tabs). Raises ValueError on anything else."""
    s = line.strip()
    for sep in (";", "\t"):
        if sep in s:
            path, label = s.rsplit(sep, 1)
            break
    else:
        parts = s.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError("expected 'path;label', 'path<TAB>label' or 'path label'")
        path, label = parts
    path, label = path.strip(), label.strip()
    if not path:
        raise ValueError("empty path")
    try:
        value = int(label)
    except ValueError:
        raise ValueError(f"label {label!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"label {value} is negative")
    return path, value


def read_file_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """``(paths, labels int64)`` of a list file; errors name the file and the line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"list file not found: {str(path)!r} (lines 'path;label', 'path<TAB>label' or 'path label')"
        )
    base = Path(root) if root is not None else path.parent
    paths: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                p, label = parse_list_line(line)
            except ValueError as err:
                raise ValueError(f"{path}: line {lineno}: {err}: {line.rstrip()!r}") from None
            paths.append(p if os.path.isabs(p) else str(base / p))
            labels.append(label)
    if not paths:
        raise ValueError(f"list file {str(path)!r} has no entries")
    return paths, np.asarray(labels, dtype=np.int64)


class _PathReader:
    """Shared part: ``paths`` + ``labels`` -> decoded RGB samples."""

    paths: list[str]
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        return read_rgb(path), int(self.labels[i]), {"index": i, "path": path}

    def _check_num_classes(self, expected: int | None, source: str) -> None:
        if expected is not None and int(expected) != self.num_classes:
            raise ValueError(
                f"data.num_classes={expected} but {source} has {self.num_classes} classes; "
                f"fix data.num_classes (or set it to null to take it from the data)"
            )


class ImageFolder(_PathReader):
    """``<root>/<identity>/*.jpg`` (``data=imagefolder data.root=DIR``)."""

    def __init__(self, root: str | os.PathLike, num_classes: int | None = None, extensions=IMAGE_EXTENSIONS):
        self.root = os.fspath(root)
        self.paths, self.labels, self.classes = list_image_folder(root, tuple(extensions))
        self.num_classes = len(self.classes)
        self._check_num_classes(num_classes, f"image folder {self.root!r}")

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self)} images, {self.num_classes} identities)"


class FileList(_PathReader):
    """A list file of ``path;label`` / ``path<TAB>label`` / ``path label`` lines (``data=filelist``).

    ``num_classes`` is the largest label + 1."""

    def __init__(
        self, list_file: str | os.PathLike, root: str | os.PathLike | None = None, num_classes: int | None = None
    ):
        self.list_file = os.fspath(list_file)
        self.paths, self.labels = read_file_list(list_file, root)
        self.num_classes = int(self.labels.max()) + 1
        self._check_num_classes(num_classes, f"list file {self.list_file!r} (max label + 1)")

    def __repr__(self) -> str:
        return f"FileList({self.list_file!r}, {len(self)} images, {self.num_classes} classes)"
