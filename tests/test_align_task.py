"""task=align and task=quality score.detect=true on a folder of real photos (scikit-image's astronaut,
matplotlib's Grace Hopper, insightface's t1.jpg and Tom Hanks), degraded copies, and files that are not
photos: the real main.py in a subprocess."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from fiqa.data.align import ARCFACE_DST
from tests.helpers.photos import astronaut, grace_hopper, insightface, insightface_bytes, write_rgb
from tests.helpers.run_main import run_main

DEGRADED = ("blur_sigma3.png", "downscaled_4x.png", "jpeg_q5.jpg", "eyes_occluded.png")


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder as a user has it: two identities' sub-folders, degraded copies, a rotated phone photo,
    grayscale and 16-bit scans, a corrupt JPEG and a text file."""
    root = tmp_path_factory.mktemp("photos")
    ast, gh = astronaut(), grace_hopper()
    write_rgb(root / "collins" / "astronaut.png", ast)
    write_rgb(root / "hopper" / "grace_hopper.jpg", gh, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (root / "group").mkdir()
    (root / "group" / "t1.jpg").write_bytes(insightface_bytes("t1.jpg"))
    (root / "hanks_112.png").write_bytes(insightface_bytes("Tom_Hanks_54745.png"))
    deg = root / "degraded"
    write_rgb(deg / "blur_sigma3.png", cv2.GaussianBlur(ast, (0, 0), 3))
    write_rgb(deg / "downscaled_4x.png", cv2.resize(ast, (128, 128), interpolation=cv2.INTER_AREA))
    write_rgb(deg / "jpeg_q5.jpg", ast, [cv2.IMWRITE_JPEG_QUALITY, 5])
    occluded = ast.copy()
    occluded[88:116, 190:262] = 0  # a black band over both eyes (eyes at y ~ 101-103)
    write_rgb(deg / "eyes_occluded.png", occluded)
    pil = Image.fromarray(np.rot90(gh, 1).copy())  # stored rotated, EXIF says: rotate 90 clockwise to display
    exif = pil.getexif()
    exif[0x0112] = 6
    pil.save(root / "phone_rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())
    write_rgb(root / "gray.png", np.repeat(cv2.cvtColor(gh, cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2))
    cv2.imwrite(str(root / "scan16.png"), gh[:, :, ::-1].astype(np.uint16) * 257)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (root / "notes.txt").write_text("not a photo\n")
    return root


@pytest.fixture(scope="module")
def aligned(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned")
    run = tmp_path_factory.mktemp("run")
    proc = run_main(
        "task=align",
        f"align.input={photos}",
        f"align.output={out}",
        "align.faces=all",
        "align.rec=true",
        "align.progress=false",
        f"hydra.run.dir={run}",
    )
    return out, run, proc


def test_every_photo_is_aligned_or_reported(photos, aligned):
    out, run, proc = aligned
    faces, failed = _rows(out / "faces.csv"), _rows(out / "failed.csv")
    sources = {str(p.relative_to(photos)) for p in photos.rglob("*") if p.is_file()}
    seen = {r["source"] for r in faces} | {r["source"] for r in failed}
    assert seen == sources  # nothing lost, nothing invented
    assert not {r["source"] for r in faces} & {r["source"] for r in failed}
    why = {r["source"]: r["reason"] for r in failed}
    assert why["corrupt.jpg"] == "unreadable" and why["notes.txt"] == "not_an_image"
    per_source = {s: sum(r["source"] == s for r in faces) for s in sources}
    assert per_source["group/t1.jpg"] == 6
    for s in (
        "collins/astronaut.png",
        "hopper/grace_hopper.jpg",
        "hanks_112.png",
        "phone_rotated.jpg",
        "gray.png",
        "scan16.png",
    ):
        assert per_source[s] == 1, s
    for name in DEGRADED:  # aligned or reported, never a crash
        assert per_source[f"degraded/{name}"] == 1 or why[f"degraded/{name}"] in ("no_face", "face_too_small")
    assert "images without a crop" in proc.stderr + proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["faces"] == len(faces) and metrics["failed"] == len(failed)


def test_crops_and_landmark_columns(photos, aligned):
    out, _, _ = aligned
    rows = _rows(out / "faces.csv")
    for r in rows:
        crop = cv2.imread(str(out / r["crop"]))
        assert crop.shape == (112, 112, 3)
        box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
        assert box[0] < float(r["nose_x"]) < box[2] and box[1] < float(r["nose_y"]) < box[3]
        assert 0.5 < float(r["det_score"]) <= 1.0
    # the EXIF-rotated phone photo is aligned upright: its landmarks are in the displayed frame, eyes above nose
    (phone,) = [r for r in rows if r["source"] == "phone_rotated.jpg"]
    (ref,) = [r for r in rows if r["source"] == "hopper/grace_hopper.jpg"]
    for k in ("left_eye_x", "left_eye_y", "nose_x", "nose_y", "right_mouth_x", "right_mouth_y"):
        assert abs(float(phone[k]) - float(ref[k])) < 4, k


def test_rerun_skips_what_is_done(photos, aligned, tmp_path):
    out, _, _ = aligned
    before = (out / "faces.csv").read_text(), (out / "failed.csv").read_text()
    proc = run_main(
        "task=align",
        f"align.input={photos}",
        f"align.output={out}",
        "align.faces=all",
        "align.progress=false",
        "align.report=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert "aligning 0 photos" in proc.stderr + proc.stdout
    assert ((out / "faces.csv").read_text(), (out / "failed.csv").read_text()) == before


def test_rec_output_is_training_data(aligned):
    from fiqa.data.sources import RecSource

    out, _, _ = aligned
    rows = _rows(out / "faces.csv")
    rec = RecSource(out / "train.rec")
    assert len(rec) == len(rows)
    manifest = json.loads((out / "pack_manifest.json").read_text())
    # identities = first folder level: "" (top-level files), collins, degraded, group, hopper
    assert manifest["num_classes"] == 5
    img, _, _ = rec[0]
    assert img.shape == (112, 112, 3)


def test_report_files(aligned):
    out, _, _ = aligned
    for name in ("alignment.png", "contact_sheet.png", "index.html"):
        assert (out / "report" / name).is_file(), name
    assert cv2.imread(str(out / "report" / "contact_sheet.png")) is not None


def test_face_too_small_and_center(tmp_path):
    ast = astronaut()
    write_rgb(tmp_path / "in" / "small.png", cv2.resize(ast, (200, 200), interpolation=cv2.INTER_AREA))
    (tmp_path / "in" / "group.jpg").write_bytes(insightface_bytes("t1.jpg"))
    run_main(
        "task=align",
        f"align.input={tmp_path / 'in'}",
        f"align.output={tmp_path / 'out'}",
        "align.faces=center",
        "align.min_face_size=40",
        "align.progress=false",
        "align.report=false",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    failed = {r["source"]: r for r in _rows(tmp_path / "out" / "failed.csv")}
    assert (
        failed["small.png"]["reason"] == "face_too_small" and "align.min_face_size=40" in failed["small.png"]["detail"]
    )
    (row,) = _rows(tmp_path / "out" / "faces.csv")
    # t1.jpg (1280 x 886): the face whose box centre is nearest the image centre is the man in the red shirt
    cx = (float(row["x1"]) + float(row["x2"])) / 2
    assert 700 < cx < 900
    proc = run_main(
        "task=align",
        f"align.input={tmp_path / 'in'}",
        "align.faces=biggest",
        f"hydra.run.dir={tmp_path / 'r2'}",
        check=False,
    )
    assert proc.returncode != 0 and "align.faces='biggest'" in proc.stderr and "largest" in proc.stderr


def test_quality_on_photos(photos, trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    proc = run_main(
        "task=quality",
        f"ckpt_path={ckpt}",
        f"score.input={photos}",
        "score.detect=true",
        "align.faces=all",
        "score.scale=iso",
        "score.iso.fit=true",
        "score.progress=false",
        "score.num_workers=0",
        f"hydra.run.dir={tmp_path}",
    )
    rows = _rows(tmp_path / "qualities.csv")
    assert sum(r["path_or_key"] == "group/t1.jpg" for r in rows) == 6
    assert {"face", "quality", "quality_iso", "det_score", "left_eye_x"} <= set(rows[0])
    q = np.array([float(r["quality"]) for r in rows])
    iso = np.array([int(r["quality_iso"]) for r in rows])
    assert np.isfinite(q).all() and ((0 <= iso) & (iso <= 100)).all()
    assert all(np.diff(iso[np.argsort(q)]) >= 0)  # the mapping is monotone
    fitted = json.loads((tmp_path / "iso_scale.json").read_text())
    assert fitted["n"] == len(rows)
    failed = {r["source"]: r["reason"] for r in _rows(tmp_path / "failed.csv")}
    assert failed["corrupt.jpg"] == "unreadable" and failed["notes.txt"] == "not_an_image"
    assert "images had no face" in proc.stderr + proc.stdout
    assert (tmp_path / "report" / "contact_sheet.png").is_file()


def test_quality_iso_from_the_checkpoint_and_unaligned_warning(photos, trained_run, tmp_path):
    """A fiqa checkpoint stores the 0-100 mapping fitted on its validation images; scoring photos without
    score.detect warns that they look unaligned."""
    import torch

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["fiqa_iso_scale"]
    assert stored["w"] > 0 and "validation images of synth" in stored["source"]
    good = tmp_path / "good"
    write_rgb(good / "a.png", astronaut())
    write_rgb(good / "b.png", cv2.resize(insightface("Tom_Hanks_54745.png"), (112, 112)))
    proc = run_main(
        "task=quality",
        f"ckpt_path={ckpt}",
        f"score.input={good}",
        "score.scale=iso",
        "score.num_workers=0",
        "score.progress=false",
        f"hydra.run.dir={tmp_path / 'r'}",
        check=False,
    )
    out = proc.stderr + proc.stdout
    assert "look unaligned" in out and "score.detect=true" in out
    (good / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    proc = run_main(
        "task=quality",
        f"ckpt_path={ckpt}",
        f"score.input={good}",
        "score.detect=true",
        "score.scale=iso",
        "score.format=ofiq",
        "score.num_workers=0",
        "score.progress=false",
        f"hydra.run.dir={tmp_path / 'r2'}",
    )
    assert f"x0={stored['x0']:.6g}" in proc.stderr + proc.stdout
    rows = _rows(tmp_path / "r2" / "qualities.csv")
    assert len(rows) == 2 and all(0 <= int(r["quality_iso"]) <= 100 for r in rows)
    ofiq = (tmp_path / "r2" / "ofiq.csv").read_text().splitlines()
    assert ofiq[0] == "Filename;Quality;Quality.scalar;assessment_time_in_ms;"
    by_name = {line.split(";")[0]: line.split(";") for line in ofiq[1:]}
    assert by_name["corrupt.jpg"] == ["corrupt.jpg", "", "", "0"]
    assert int(by_name["a.png"][2]) == int([r for r in rows if r["path_or_key"] == "a.png"][0]["quality_iso"])


def test_template_of_redetected_crops_written_by_task(aligned):
    """The crops task=align wrote are aligned: detecting on them again finds the eyes where the ArcFace
    template puts them (within 4 px, the eyes; mouth and nose depend on the face's expression)."""
    from fiqa.detect import detect

    out, _, _ = aligned
    rows = [r for r in _rows(out / "faces.csv") if r["source"] in ("collins/astronaut.png", "hopper/grace_hopper.jpg")]
    for r in rows:
        crop = cv2.imread(str(out / r["crop"]))[:, :, ::-1].copy()
        f = detect(crop)
        assert len(f) >= 1
        assert np.linalg.norm(f.landmarks[0][:2] - ARCFACE_DST[:2], axis=1).max() < 4.0


def test_ofiq_geometry_crop_is_close_to_arcface():
    """OFIQ's alignment (616 crop -> 192 -> rows 33-145, cols 40-152) puts the landmarks within 1 px of
    where the ArcFace template does: the two aligned crops of one photo nearly coincide."""
    from fiqa.data.align import norm_crop
    from fiqa.detect import detect
    from fiqa.quality.ofiq import ofiq_align

    img = astronaut()
    lm = detect(img).landmarks[0]
    a, b = norm_crop(img, lm).astype(float), ofiq_align(img, lm).astype(float)
    assert np.abs(a - b).mean() < 12  # same face, same place; resampling differs


def test_quality_scale_ofiq_with_an_onnx_model(tmp_path):
    """score.scale=ofiq with score.ofiq_model: OFIQ's alignment, blob and mapping around a (stand-in) ONNX
    model whose output 0 is the L2 norm of its input; the raw column equals that norm computed here from
    the detector's landmarks with OFIQ's geometry, the scalar is OFIQ's sigmoid of it."""
    pytest.importorskip("onnxruntime", reason="onnxruntime (a dev dependency) runs OFIQ's ONNX model")
    from fiqa.detect import detect
    from fiqa.quality.iso_scale import OFIQ_UNIFIED, sigmoid_map
    from fiqa.quality.ofiq import ofiq_align, ofiq_input
    from tests.quality.test_ofiq import build_model

    build_model(tmp_path / "norm.onnx", "norm", batch=1, chw=(3, 112, 112))
    img = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    write_rgb(tmp_path / "in" / "a.png", img)
    run_main(
        "task=quality",
        f"score.input={tmp_path / 'in'}",
        "score.detect=true",
        "score.scale=ofiq",
        f"score.ofiq_model={tmp_path / 'norm.onnx'}",
        "score.format=ofiq",
        "score.progress=false",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    (row,) = _rows(tmp_path / "r" / "qualities.csv")
    lm = detect(img).landmarks[0]
    want = float(np.linalg.norm(ofiq_input(ofiq_align(img, lm)[None])))
    assert float(row["quality"]) == pytest.approx(want, rel=1e-4)
    assert int(row["quality_iso"]) == int(sigmoid_map(want, **OFIQ_UNIFIED))
    header, line = (tmp_path / "r" / "ofiq.csv").read_text().splitlines()
    assert header == "Filename;UnifiedQualityScore;UnifiedQualityScore.scalar;assessment_time_in_ms;"
    name, raw, scalar, _ = line.split(";")
    assert (name, scalar) == ("a.png", row["quality_iso"]) and float(raw) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow  # CI time: runs in make test-full
def test_magface_checkpoint_gets_ofiqs_mapping(tmp_path):
    """A MagFace model's quality is its feature norm: score.scale=iso maps it with OFIQ's x0=23, w=2.6, and
    score.scale=ofiq (no ONNX model given) runs the checkpoint itself on OFIQ's alignment."""
    from fiqa.quality.iso_scale import OFIQ_UNIFIED, sigmoid_map
    from tests.helpers.run_main import TINY, TINY_VAL

    run_main("method=magface", *TINY, *TINY_VAL, "data.train.num_identities=8", f"hydra.run.dir={tmp_path / 't'}")
    write_rgb(tmp_path / "in" / "a.png", astronaut())
    write_rgb(tmp_path / "in" / "b.jpg", grace_hopper())
    ckpt = tmp_path / "t" / "checkpoints" / "last.ckpt"
    for scale in ("iso", "ofiq"):
        proc = run_main(
            "task=quality",
            f"ckpt_path={ckpt}",
            f"score.input={tmp_path / 'in'}",
            "score.detect=true",
            f"score.scale={scale}",
            "score.progress=false",
            f"hydra.run.dir={tmp_path / scale}",
        )
        rows = _rows(tmp_path / scale / "qualities.csv")
        assert len(rows) == 2
        q = np.array([float(r["quality"]) for r in rows])
        assert [int(r["quality_iso"]) for r in rows] == sigmoid_map(q, **OFIQ_UNIFIED).astype(int).tolist()
        assert "x0=23, w=2.6" in proc.stderr + proc.stdout
    q_iso = [float(r["quality"]) for r in _rows(tmp_path / "iso" / "qualities.csv")]
    q_ofiq = [float(r["quality"]) for r in _rows(tmp_path / "ofiq" / "qualities.csv")]
    assert q_iso != q_ofiq  # two alignments (ArcFace's norm_crop vs OFIQ's), two crops


def test_quality_iso_on_photos_needs_no_model(photos, aligned, tmp_path):
    """quality=iso: the ISO/IEC 29794-5 components of every face, no checkpoint; OFIQ's CSV layout; the
    report names what pulled the faces down; aligned crops get the appearance measures only."""
    from fiqa.quality import iso

    run_main("task=quality", "quality=iso", f"score.input={photos}", "score.detect=true", "score.format=ofiq",
             "score.progress=false", f"hydra.run.dir={tmp_path}")  # fmt: skip
    rows = _rows(tmp_path / "qualities.csv")
    assert {"quality", "SharpnessLaplacian", "SharpnessLaplacian.scalar", "HeadPoseRoll5pt.scalar"} <= set(rows[0])
    by = {r["path_or_key"]: r for r in rows}

    def q(key, name):
        return int(by[key][f"{name}.scalar"])

    assert q("degraded/blur_sigma3.png", "SharpnessLaplacian") < q("collins/astronaut.png", "SharpnessLaplacian")
    assert float(by["gray.png"]["NaturalColour"]) == 0.0  # OFIQ: a grey image has D = 0
    # SingleFacePresent counts every detected face, also with align.faces=largest
    assert q("group/t1.jpg", "SingleFacePresent") < 50 <= q("collins/astronaut.png", "SingleFacePresent")
    for r in rows:
        assert 0 <= float(r["quality"]) <= 100
        assert float(r["quality"]) == min(int(r[f"{n}.scalar"]) for n in iso.COMPONENT_SETS["recognition"])
    ofiq = (tmp_path / "ofiq.csv").read_text().splitlines()
    header = ofiq[0].split(";")
    assert header[:2] == ["Filename", "IlluminationUniformity"]  # OFIQ's order: by QAA id (0x43 first here)
    assert header[-2:] == ["assessment_time_in_ms", ""]
    assert header.index("IlluminationUniformity.scalar") == 1 + len(iso.NAMES)  # raw values, then the scalars
    lines = {line.split(";")[0]: line.split(";") for line in ofiq[1:]}
    assert lines["corrupt.jpg"] == ["corrupt.jpg", *[""] * (2 * len(iso.NAMES)), "0"]
    a = lines["collins/astronaut.png"]
    assert int(a[header.index("SharpnessLaplacian.scalar")]) == q("collins/astronaut.png", "SharpnessLaplacian")
    html = (tmp_path / "report" / "index.html").read_text()
    assert (tmp_path / "report" / "components.png").stat().st_size > 5_000 and "limiting component" in html
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < m["ms_per_face"] < 1000
    crops, _, _ = aligned
    run_main("task=quality", "quality=iso", f"score.input={crops}", "score.progress=false",
             f"hydra.run.dir={tmp_path / 'crops'}")  # fmt: skip
    crop_rows = _rows(tmp_path / "crops" / "qualities.csv")
    assert crop_rows and all(r["HeadSize.scalar"] == "-1" and int(r["DynamicRange.scalar"]) >= 0 for r in crop_rows)
