"""GPU checks (`make test-gpu` on a machine with CUDA); skipped with a reason elsewhere."""

import pytest
import torch

from tests.helpers.run_main import TINY, TINY_VAL, read_metrics, run_main

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run `make test-gpu` there)")


@pytest.mark.gpu
@needs_gpu
def test_bf16_fast_dev_run_on_gpu(tmp_path):
    run_main(*TINY, *TINY_VAL, "trainer=gpu", "debug=fdr", f"hydra.run.dir={tmp_path}")


@pytest.mark.gpu
@needs_gpu
def test_single_gpu_ddp_trains(tmp_path):
    run_main(*TINY, *TINY_VAL, "trainer=ddp", "trainer.devices=1", f"hydra.run.dir={tmp_path}")
    assert "val/synth/acc" in read_metrics(tmp_path)


@pytest.mark.gpu
@needs_gpu
def test_fp16_mixed_with_grad_scaler_trains(tmp_path):
    """trainer.precision=16-mixed: Lightning's GradScaler with our fp32 heads; the loss stays finite."""
    run_main(*TINY, *TINY_VAL, "trainer=gpu", "trainer.precision=16-mixed", f"hydra.run.dir={tmp_path}")
    assert "val/synth/acc" in read_metrics(tmp_path)


@pytest.mark.gpu
@needs_gpu
def test_bf16_compiled_backbone_trains(tmp_path):
    run_main(*TINY, *TINY_VAL, "trainer=gpu", "trainer.compile=true", f"hydra.run.dir={tmp_path}")
    assert "val/synth/acc" in read_metrics(tmp_path)


@pytest.mark.gpu
@needs_gpu
def test_face_detection_on_gpu_equals_cpu():
    """fiqa.detect on CUDA finds the same faces as on the CPU (t1.jpg: six), landmarks within 0.5 px."""
    import numpy as np

    from fiqa.detect import FaceDetector
    from tests.helpers.photos import astronaut, insightface

    photos = [astronaut(), insightface("t1.jpg")]
    cpu, gpu = FaceDetector(device="cpu")(photos), FaceDetector(device="cuda")(photos)
    assert [len(f) for f in gpu] == [len(f) for f in cpu] == [1, 6]
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.5)
