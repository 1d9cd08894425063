"""RecordIO read + decode + augment throughput (images/s per core / per DataLoader worker).

    python benchmarks/recordio_throughput.py [--workdir DIR] [--n 20000] [--seconds 3] [--workers 1 2]

On first use it renders ``--n`` SynthFace images (112x112), packs them with ``fiqa.data.pack``
(face2rec2, re-encoded JPEG q95) and caches the ``.rec`` in ``--workdir`` (default: a folder in the
system temp dir). Then, in this process with one OpenCV / torch thread, it times in random key order:

* read: ``MXIndexedRecordIO.read_idx`` + ``unpack``;
* read + decode with every available decoder (cv2 = ``fiqa.data.images.decode_rgb``, PIL, simplejpeg,
  torchvision ``decode_jpeg``), each checked against cv2's pixels;
* read + decode (cv2) + augment (``RandomHorizontalFlip`` + ``ToModelInput``), then the same through
  ``FaceDataset(MXRecDataset(root), transform)`` in this process (the sample dict, label checks);
* a DataLoader over that FaceDataset with 1, 2 ... workers (steady state, start-up excluded), once with
  float32 output (``ToModelInput`` in the workers) and once with uint8 output (normalised on the device);
* on a CUDA device (when there is one): batched ``torchvision.io.decode_jpeg(..., device="cuda")`` of
  256 payloads at a time (nvJPEG), against one CPU core decoding with cv2: does the GPU need to decode?
* opening a synthetic ``.idx`` of MS1MV2's 5,822,653 lines (sparse ``.rec``) with ``MXIndexedRecordIO``
  and with ``fiqa.data.mxrec.read_index``.

It prints a markdown table and PASS/FAIL against the target of >= 3,000 images/s per core for
read + decode with the package's decoder; it always exits 0. Never part of the tests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from fiqa.data.images import decode_rgb
from fiqa.data.pack import pack_dataset
from fiqa.data.recordio import MXIndexedRecordIO, unpack
from fiqa.data.transforms import Compose, RandomHorizontalFlip, ToModelInput

TARGET = 3000  # images/s per core, read + decode
MS1MV2_IMAGES = 5_822_653


# ------------------------------------------------------------------------------------------ the data set
def build_rec(workdir: Path, n: int) -> Path:
    """``workdir/rec{n}/train.rec`` of n SynthFace images, JPEG q95 (cached)."""
    from fiqa.data.synthface import SynthFace

    out = workdir / f"rec{n}"
    manifest = out / "pack_manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("num_images") == n:
        return out
    per_id = 40
    ds = SynthFace(num_identities=max(2, -(-n // per_id)), images_per_identity=per_id, seed=0)
    src = workdir / f"png{n}"
    shutil.rmtree(src, ignore_errors=True)
    t = time.perf_counter()
    for i in range(n):  # lossless sources, so the .rec holds exactly one JPEG q95 encoding
        img, label, _ = ds[i]
        d = src / f"{label:05d}"
        if i % per_id == 0:
            d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:06d}.png"), img[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    print(f"rendered {n} SynthFace images in {time.perf_counter() - t:.1f} s")
    s = pack_dataset(src, out, reencode=True, quality=95, overwrite=True, workers=os.cpu_count() or 1)
    print(f"packed in {s['seconds']:.1f} s: {s['bytes'] / n:.0f} bytes/image")
    shutil.rmtree(src)
    return out


# ---------------------------------------------------------------------------------------------- decoders
def decoders() -> dict[str, Callable[[bytes], np.ndarray] | str]:
    """name -> bytes -> uint8 HxWx3 RGB, or a string saying why it is unavailable."""
    out: dict = {"cv2.imdecode + cvtColor (fiqa decode_rgb)": decode_rgb}
    from PIL import Image

    out["PIL open + convert('RGB')"] = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    try:
        import simplejpeg

        out["simplejpeg.decode_jpeg"] = lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB")
    except ImportError:
        out["simplejpeg.decode_jpeg"] = "not installed (pip install simplejpeg)"
    try:
        from torchvision.io import decode_jpeg

        def tv(b: bytes) -> np.ndarray:
            return decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8)).permute(1, 2, 0).numpy()

        tv(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
        out["torchvision.io.decode_jpeg (CPU)"] = tv
    except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
        out["torchvision.io.decode_jpeg (CPU)"] = f"unavailable ({type(err).__name__}: {err})"
    return out


# ------------------------------------------------------------------------------------------------ timing
def rate(fn: Callable[[int], object], keys: np.ndarray, seconds: float) -> float:
    """Images/s of ``fn(key)`` over ``keys`` (cycled), best of three timed slices after a warm-up."""
    for k in keys[:200]:
        fn(int(k))
    best, i = 0.0, 0
    for _ in range(3):
        t0, done = time.perf_counter(), 0
        while True:
            for _ in range(200):
                fn(int(keys[i % keys.size]))
                i += 1
            done += 200
            dt = time.perf_counter() - t0
            if dt >= seconds / 3:
                break
        best = max(best, done / dt)
    return best


class ToUint8Tensor:
    """Flip, then a uint8 HxWx3 tensor: the loader ships 1/4 of the bytes and the device normalises."""

    def __init__(self, p: float = 0.5):
        self.flip = RandomHorizontalFlip(p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.flip(img, rng)))


def face_dataset(root: Path, transform):
    from fiqa.data.datamodule import FaceDataset
    from fiqa.data.mxrec import MXRecDataset

    return FaceDataset(MXRecDataset(root), transform)


def loader_rate(dataset, workers: int, seconds: float, batch_size: int = 128) -> float:
    """Steady-state images/s of a shuffled DataLoader (the first batches, i.e. worker start-up, excluded)."""
    from fiqa.data.datamodule import _worker_init

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        worker_init_fn=_worker_init,
        prefetch_factor=4,
    )
    it = iter(loader)
    for _ in range(2 * workers):  # start-up
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            n += next(it)["image"].shape[0]
        except StopIteration:
            it = iter(loader)
    rate_ = n / (time.perf_counter() - t0)
    del it
    return rate_


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def idx_open(workdir: Path) -> list[tuple[str, str]]:
    """Open a synthetic MS1MV2-sized .idx (fake offsets, sparse .rec) with both index readers."""
    d = workdir / "ms1mv2_idx"
    idx, rec = d / "train.idx", d / "train.rec"
    step = 8192  # ~ MS1MV2's bytes per record order of magnitude; only offsets matter here
    if not idx.is_file():
        d.mkdir(parents=True, exist_ok=True)
        keys = np.arange(MS1MV2_IMAGES + 1)
        np.savetxt(idx, np.stack([keys, keys * step], 1), fmt="%d", delimiter="\t")
    with open(rec, "ab") as f:
        f.truncate((MS1MV2_IMAGES + 1) * step)  # sparse: no disk used
    rows = []
    before, t = rss_mb(), time.perf_counter()
    r = MXIndexedRecordIO(idx, rec, "r")
    dt, mem = time.perf_counter() - t, rss_mb() - before
    assert len(r.keys) == MS1MV2_IMAGES + 1
    rows.append(("open MS1MV2-size .idx: MXIndexedRecordIO", f"{dt:.2f} s, +{mem:.0f} MB RSS"))
    r.close()
    del r
    try:
        from fiqa.data.mxrec import read_index
    except ImportError:
        return rows
    before, t = rss_mb(), time.perf_counter()
    keys, offs = read_index(idx, os.path.getsize(rec), str(rec))
    dt, mem = time.perf_counter() - t, rss_mb() - before
    rows.append(("open MS1MV2-size .idx: mxrec.read_index", f"{dt:.2f} s, +{mem:.0f} MB RSS"))
    return rows


def gpu_decode_row(payloads: list[bytes], seconds: float, batch: int = 256) -> tuple[str, float | None, int, str]:
    """nvJPEG through torchvision, batches of ``batch`` payloads already in host memory, synchronised."""
    name = f"decode on the GPU: torchvision decode_jpeg(device='cuda'), batch {batch}"
    if not torch.cuda.is_available():
        return name, None, 1, "skipped: no CUDA device on this machine"
    from torchvision.io import decode_jpeg

    data = [torch.frombuffer(bytearray(payloads[i % len(payloads)]), dtype=torch.uint8) for i in range(batch)]
    decode_jpeg(data, device="cuda")  # warm-up (nvJPEG handles)
    torch.cuda.synchronize()
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        decode_jpeg(data, device="cuda")
        done += batch
    torch.cuda.synchronize()
    return name, done / (time.perf_counter() - t0), 1, f"{torch.cuda.get_device_name()}, decoded images stay on the GPU"


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fiqa_bench_recordio")
    p.add_argument("--n", type=int, default=20000, help="images in the generated .rec")
    p.add_argument("--seconds", type=float, default=3.0, help="time per stage")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts")
    p.add_argument("--no-idx", action="store_true", help="skip the MS1MV2-size .idx open")
    a = p.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    a.workdir.mkdir(parents=True, exist_ok=True)
    root = build_rec(a.workdir, a.n)
    rec = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "r")
    header, _ = unpack(rec.read_idx(0))
    keys = np.random.default_rng(0).permutation(np.arange(1, int(header.label[0])))
    payloads = {int(k): unpack(rec.read_idx(int(k)))[1] for k in keys[:500]}

    def read(k: int):
        return unpack(rec.read_idx(k))

    rows: list[tuple[str, float | None, int, str]] = []  # stage, images/s, cores, note
    rows.append(("read (read_idx + unpack)", rate(read, keys, a.seconds), 1, ""))
    ok: dict[str, float] = {}
    for name, dec in decoders().items():
        if isinstance(dec, str):
            rows.append((f"read + decode: {name}", None, 1, dec))
            continue
        diff = max(int(np.abs(dec(b).astype(int) - decode_rgb(b).astype(int)).max()) for b in payloads.values())
        ok[name] = rate(lambda k, dec=dec: dec(read(k)[1]), keys, a.seconds)
        rows.append((f"read + decode: {name}", ok[name], 1, f"max abs pixel difference to cv2: {diff}"))
    aug = Compose([RandomHorizontalFlip(0.5), ToModelInput()])
    rng = np.random.default_rng(0)
    r_ = rate(lambda k: aug(decode_rgb(read(k)[1]), rng), keys, a.seconds)
    rows.append(("read + decode (cv2) + flip + ToModelInput", r_, 1, "float32 CHW out"))
    fds = face_dataset(root, aug)
    order = np.random.default_rng(1).permutation(len(fds))
    r_ = rate(fds.__getitem__, order, a.seconds)
    rows.append(("FaceDataset(MXRecDataset) + flip + ToModelInput, in process", r_, 1, "sample dict, label checks"))
    for w in a.workers:
        r_ = loader_rate(fds, w, a.seconds)
        rows.append((f"DataLoader, {w} worker(s), batch 128, float32 out", r_, w, "FaceDataset as above"))
    u8 = face_dataset(root, Compose([ToUint8Tensor(0.5)]))
    for w in a.workers:
        r_ = loader_rate(u8, w, a.seconds)
        rows.append((f"DataLoader, {w} worker(s), batch 128, uint8 out", r_, w, "normalise on the device"))
    rows.append(gpu_decode_row(list(payloads.values()), a.seconds))
    extra = [] if a.no_idx else idx_open(a.workdir)

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    size = os.path.getsize(root / "train.rec") / a.n
    print(f"\nmachine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, opencv {cv2.__version__}")
    print(f"data: {a.n} SynthFace 112x112 JPEG q95 ({size:.0f} bytes/image avg), random key order, 1 thread\n")
    print("| stage | images/s | per core | note |\n|---|---:|---:|---|")
    for name, r_, cores, note in rows:
        if r_ is None:
            print(f"| {name} | - | - | {note} |")
        else:
            print(f"| {name} | {r_:,.0f} | {r_ / cores:,.0f} | {note} |")
    for name, value in extra:
        print(f"| {name} | | | {value} |")
    cv2_rate = ok["cv2.imdecode + cvtColor (fiqa decode_rgb)"]
    best = max(ok, key=ok.get)
    verdict = "PASS" if cv2_rate >= TARGET else "FAIL"
    print(
        f"\n{verdict}: read + decode with the package decoder (cv2): {cv2_rate:,.0f} images/s per core "
        f"(target >= {TARGET:,}); fastest decoder here: {best} at {ok[best]:,.0f} images/s"
    )


if __name__ == "__main__":
    main()
