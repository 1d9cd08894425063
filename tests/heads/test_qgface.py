"""QGFace heads (shared/reference methods_eqface_qgface_adaface §2.3-§2.5): the classification gate, the
contrastive gates, pair quality, rescale factor, proxy update and contrastive loss against hand-worked
numbers and an independent numpy transcription; the ring-buffer queue (pointer wrap, state_dict round
trip) and its enqueue gathered across a 2-process gloo group."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fiqa.heads.adaface import AdaFaceHead
from fiqa.heads.qgface import (
    QGFaceContrast,
    QGFaceHead,
    all_gather_cat,
    classification_gate,
    contrastive_gate,
    contrastive_loss,
    pair_quality,
    proxy_update,
    rescale_factor,
)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---- classification gate --------------------------------------------------------------------------
def test_classification_gate_hand_values_and_the_originals_form():
    ms = torch.tensor([0.0, 0.2, -0.01, -1.0])
    g = classification_gate(ms, 0.5, 64.0)
    # q = (ms+1)/2 = 0.5, 0.6, 0.495, 0 -> sigmoid(128 (q - 0.5)) = sigmoid(0), sigmoid(12.8), sigmoid(-0.64), ...(-64)
    expected = [0.5, 1 / (1 + math.exp(-12.8)), 1 / (1 + math.exp(0.64)), 1 / (1 + math.exp(64))]
    torch.testing.assert_close(g, torch.tensor(expected), rtol=1e-6, atol=1e-12)
    assert abs(float(g[2]) - 0.34525) < 1e-5
    # the original writes sigmoid(s * (ms + 2 * (0.5 - qs)))
    for qs in (0.2, 0.45, 0.7):
        orig = torch.tensor([sigmoid(64 * (m + 2 * (0.5 - qs))) for m in ms.tolist()])
        torch.testing.assert_close(classification_gate(ms, qs, 64.0), orig, rtol=1e-4, atol=1e-7)
    assert classification_gate(ms, 0.0, 64.0) is None  # qs = 0: no gate


def test_qgface_head_multiplies_the_adaface_logits_and_stops_low_quality_gradients():
    torch.manual_seed(0)
    ada = AdaFaceHead(5, 8, init_mean=20.0, init_std=100.0)
    qg = QGFaceHead(5, 8, quality_scale=0.5)
    qg.load_state_dict(ada.state_dict(), strict=False)  # + num_updates
    assert float(qg.batch_mean) == 20.0 and float(qg.batch_std) == 100.0  # AdaFace's start, not the original's 0
    for h in (ada, qg):
        h.batch_std.fill_(5.0)
    x = torch.randn(6, 8) * 3
    x[:3] *= 20  # high norms -> ms > 0 -> gate ~ 1; low norms -> gate ~ 0
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ada.eval(), qg.eval()
    a, q = ada(x, labels), qg(x, labels)
    gate = classification_gate(q.ms, 0.5, 64.0)
    torch.testing.assert_close(q.logits, a.logits * gate.view(-1, 1))
    assert (gate[:3] > 0.99).all() and (gate[3:] < 1e-6).all()
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(qg(x, labels).logits, labels, reduction="none")
    loss.sum().backward()
    assert x.grad[3:].abs().max() < 1e-6 * x.grad[:3].abs().max()  # LQ samples: no classification gradient
    torch.testing.assert_close(loss[3:].detach(), torch.full((3,), math.log(5)), atol=1e-4, rtol=0)
    qg.quality_scale = 0.0
    torch.testing.assert_close(qg(x.detach(), labels).logits, a.logits)  # qs = 0: AdaFace


def test_debiased_statistics_are_adams_bias_corrected_ema():
    """Update t uses the rate a / (1 - (1-a)^t): equal to a zero-start EMA divided by 1 - (1-a)^t."""
    g = torch.Generator().manual_seed(1)
    head = QGFaceHead(3, 4, t_alpha=0.5)
    # hand values, a = 0.5: t=1 -> rate 1 (mean = x1); t=2 -> rate 0.5 / 0.75 = 2/3 (mean = x1/3 + 2 x2/3)
    head.update_statistics(torch.tensor([1.0, 3.0]))  # mean 2, std sqrt(2)
    assert float(head.batch_mean) == pytest.approx(2.0) and float(head.batch_std) == pytest.approx(math.sqrt(2))
    head.update_statistics(torch.tensor([4.0, 6.0, 8.0]))  # mean 6, std 2
    assert float(head.batch_mean) == pytest.approx(2 / 3 + 4) and float(head.batch_std) == pytest.approx(
        math.sqrt(2) / 3 + 4 / 3
    )
    head = QGFaceHead(3, 4, t_alpha=0.01)
    raw_m = raw_s = 0.0
    for t in range(1, 301):
        x = torch.rand(16, generator=g) * 10 + t / 30
        head.update_statistics(x)
        raw_m = 0.99 * raw_m + 0.01 * float(x.mean())
        raw_s = 0.99 * raw_s + 0.01 * float(x.std())
        if t in (1, 7, 300):
            c = 1 - 0.99**t
            assert float(head.batch_mean) == pytest.approx(raw_m / c, rel=1e-4), t
            assert float(head.batch_std) == pytest.approx(raw_s / c, rel=1e-4), t
    assert float(head.num_updates) == 300 and "num_updates" in head.state_dict()
    plain = QGFaceHead(3, 4, debias_stats=False)  # AdaFace's EMA from 20 / 100
    plain.update_statistics(torch.tensor([1.0, 3.0]))
    assert float(plain.batch_mean) == pytest.approx(0.99 * 20 + 0.02)


# ---- contrastive gates, pair quality, rescale, proxy update -----------------------------------------
def test_contrastive_gates_hand_values():
    t = torch.tensor([0.1, 0.25, 0.5, 0.6])
    torch.testing.assert_close(contrastive_gate(t, 0.5, "sgn"), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # cos: (1 - cos(pi t / qs)) / 2 below qs: t=0.1 -> (1 - cos(0.2 pi))/2 = (1 - 0.809017)/2
    torch.testing.assert_close(contrastive_gate(t, 0.5, "cos"), torch.tensor([0.0954915, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(contrastive_gate(t, 0.5, "linear"), torch.tensor([0.2, 0.5, 0.0, 0.0]))
    for kind in ("sgn", "cos", "linear"):
        torch.testing.assert_close(contrastive_gate(t, 0.0, kind), torch.ones(4))
    with pytest.raises(ValueError, match="gate='step'.*sgn"):
        contrastive_gate(t, 0.5, "step")


def test_pair_quality_and_rescale_factor():
    a, b = torch.tensor([0.2, 0.9]), torch.tensor([0.6, 0.3])
    torch.testing.assert_close(pair_quality(a, b, "low"), torch.tensor([0.2, 0.3]))
    torch.testing.assert_close(pair_quality(a, b, "mean"), torch.tensor([0.4, 0.6]))
    torch.testing.assert_close(pair_quality(a, b, "high"), torch.tensor([0.6, 0.9]))
    with pytest.raises(ValueError, match="quality_select"):
        pair_quality(a, b, "median")
    assert rescale_factor(128) == pytest.approx(1.0)
    assert rescale_factor(4096) == pytest.approx(4.859812 / 8.318010, rel=1e-6)  # log 129 / log 4097
    assert rescale_factor(3) == pytest.approx(math.log(129) / math.log(4))
    assert rescale_factor(0) == 1.0 and rescale_factor(500, reference=0) == 1.0


def test_proxy_update_hand_values():
    e = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    w_old = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w_now = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    # row 0: e + 1/2 (0, 2) = (1, 1); row 1: e + 3/1 (1, 0) = (3, 3)
    torch.testing.assert_close(proxy_update(e, w_old, w_now), torch.tensor([[1.0, 1.0], [3.0, 3.0]]))
    torch.testing.assert_close(proxy_update(e, w_old, w_old), e)  # no proxy change: no move


# ---- contrastive loss ------------------------------------------------------------------------------
def _hand_case():
    lq = torch.tensor([[1.0, 0.0]])
    hq = torch.tensor([[0.5, math.sqrt(3) / 2]])  # 60 degrees from lq: positive cosine 0.5
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # own view, another class, same class
    queue_labels, queue_indices = torch.tensor([7, 3, 7]), torch.tensor([11, 40, 12])
    return lq, hq, queue, torch.tensor([7]), queue_labels, torch.tensor([11]), queue_indices


def test_contrastive_loss_hand_worked():
    lq, hq, queue, lab, qlab, idx, qidx = _hand_case()
    one = torch.ones(1)

    def loss(**kw):
        args = {"gate": one, "s": 2.0, "symmetric": False, "rescale_reference": 0, **kw}
        return float(contrastive_loss(lq, hq, queue, lab, qlab, idx, qidx, **args))

    # own entry and same-class entry masked: logits [2*0.5, 2*0] -> log(1 + e^-1)
    assert loss() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.313262
    # same class kept: its cosine 1 -> logit 2: log(1 + e^-1 + e^1)
    assert loss(mask_same_class=False) == pytest.approx(math.log(1 + math.exp(-1) + math.exp(1)), abs=1e-6)
    # margin 0.1 on the positive: logit 0.8 -> log(1 + e^-0.8)
    assert loss(margin=0.1) == pytest.approx(math.log(1 + math.exp(-0.8)), abs=1e-6)
    # gate 0.5 halves every logit: log(1 + e^-0.5)
    assert loss(gate=torch.tensor([0.5])) == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    # gate 0: uniform over the positive and the one unmasked negative -> log 2, no gradient
    assert loss(gate=torch.zeros(1)) == pytest.approx(math.log(2), abs=1e-6)
    # symmetric: the hq row has positive 0.5 and cos(hq, (0,1)) = 0.866 -> log(1 + e^(1.732 - 1))
    row_hq = math.log(1 + math.exp(2 * math.sqrt(3) / 2 - 1))
    assert loss(symmetric=True) == pytest.approx((math.log(1 + math.exp(-1)) + row_hq) / 2, abs=1e-6)
    # rescale by log(129) / log(K + 1), K = 3 queue entries
    assert loss(rescale_reference=128) == pytest.approx(0.313262 * math.log(129) / math.log(4), abs=1e-5)


def reference_contrastive_loss(lq, hq, queue, labels, qlabels, idx, qidx, gate, s, margin, symmetric, mask_class, ref):
    """Independent transcription (numpy, float64, loops) of the loss as specified in fiqa.heads.qgface."""
    n = lambda v: v / np.linalg.norm(v)  # noqa: E731
    rows = [(n(lq[i]), n(hq[i]), labels[i], idx[i], gate[i]) for i in range(len(lq))]
    if symmetric:
        rows += [(n(hq[i]), n(lq[i]), labels[i], idx[i], gate[i]) for i in range(len(lq))]
    total = 0.0
    for a, p, lab, ix, g in rows:
        logits = [s * g * (min(max(a @ p, -1), 1) - margin)]
        for e, ql, qi in zip(queue, qlabels, qidx):
            if qi == ix or (mask_class and ql == lab):
                continue
            logits.append(s * g * min(max(a @ n(e), -1), 1))
        logits = np.array(logits)
        total += -(logits[0] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    loss = total / len(rows)
    return loss * (math.log(ref + 1) / math.log(len(queue) + 1) if ref else 1.0)


@pytest.mark.parametrize("symmetric,mask_class,margin,ref", [(True, True, 0.0, 128), (False, False, 0.2, 0)])
def test_contrastive_loss_matches_an_independent_transcription(symmetric, mask_class, margin, ref):
    g = torch.Generator().manual_seed(3)
    b, k, d = 5, 17, 6
    lq, hq, queue = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(k, d, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 1, 3])
    idx = torch.tensor([10, 11, 12, 13, 14])
    qlabels = torch.randint(0, 5, (k,), generator=g)
    qidx = torch.randint(8, 30, (k,), generator=g)
    qidx[:3] = torch.tensor([10, 12, 14])  # some own views in the queue
    gate = torch.tensor([1.0, 0.0, 0.3, 1.0, 0.7])
    got = contrastive_loss(
        lq, hq, queue, labels, qlabels, idx, qidx, gate, 10.0, margin, symmetric, mask_class, False, ref
    )
    want = reference_contrastive_loss(
        *(t.double().numpy() for t in (lq, hq, queue)),
        labels.tolist(), qlabels.tolist(), idx.tolist(), qidx.tolist(), gate.double().numpy(),
        10.0, margin, symmetric, mask_class, ref,
    )  # fmt: skip
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_contrastive_loss_gradients_reach_the_views_not_the_queue():
    lq, hq, queue, lab, qlab, idx, qidx = _hand_case()
    lq, hq, queue = lq.clone().requires_grad_(), hq.clone().requires_grad_(), queue.clone().requires_grad_()
    contrastive_loss(lq, hq, queue.detach(), lab, qlab, idx, qidx, torch.ones(1), 2.0).backward()
    assert lq.grad.abs().sum() > 0 and hq.grad.abs().sum() > 0
    lq.grad = hq.grad = None
    contrastive_loss(lq, hq, queue.detach(), lab, qlab, idx, qidx, torch.ones(1), 2.0, detach_hq=True).backward()
    assert lq.grad.abs().sum() > 0 and hq.grad is None


# ---- the queue ---------------------------------------------------------------------------------------
def _rows(start, n, d=3):
    labels = torch.arange(start, start + n)
    emb = torch.nn.functional.one_hot(labels % d, d).float() * 2 + 0.1
    return emb, labels, emb * 5, labels + 100


def test_enqueue_pointer_wrap_and_truncation():
    c = QGFaceContrast(3, queue_size=5)
    assert c.filled == 0 and (c.queue_label == -1).all()
    c.enqueue(*_rows(0, 3))
    assert int(c.queue_ptr) == 3 and c.queue_label.tolist() == [0, 1, 2, -1, -1] and c.filled == 3
    c.enqueue(*_rows(3, 4))  # slots 3, 4, 0, 1
    assert int(c.queue_ptr) == 2 and c.queue_label.tolist() == [5, 6, 2, 3, 4]
    assert c.queue_index.tolist() == [105, 106, 102, 103, 104]
    c.enqueue(*_rows(7, 7))  # 7 rows > K = 5: the last 5 (labels 9..13) from slot (2 + 7 - 5) % 5 = 4
    assert int(c.queue_ptr) == 4 and c.queue_label.tolist() == [10, 11, 12, 13, 9]
    emb, _, prox, _ = _rows(9, 5)
    torch.testing.assert_close(c.queue_embedding[[4, 0, 1, 2, 3]], torch.nn.functional.normalize(emb, dim=1))
    torch.testing.assert_close(c.queue_proxy[[4, 0, 1, 2, 3]], prox)  # proxies stored as given


def test_entries_are_proxy_updated_with_the_current_class_weights():
    c = QGFaceContrast(2, queue_size=4)
    c.enqueue(
        torch.tensor([[3.0, 0.0], [0.0, 1.0]]),
        torch.tensor([0, 1]),
        torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        torch.tensor([5, 6]),
    )
    w_now = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    emb, lab, idx = c.entries(w_now)
    # stored unit vectors (1,0), (0,1): (1,0) + 1/2 (0,2) = (1,1); (0,1) + 1/1 (1,0) = (1,1)
    torch.testing.assert_close(emb, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    assert lab.tolist() == [0, 1] and idx.tolist() == [5, 6]
    c.proxy_update = False
    torch.testing.assert_close(c.entries(w_now)[0], torch.eye(2))


def test_queue_state_round_trips_through_the_state_dict():
    torch.manual_seed(0)
    c = QGFaceContrast(4, queue_size=6, quality_scale=0.5)
    for start in (0, 4, 8):
        c.enqueue(torch.randn(4, 4), torch.arange(start, start + 4), torch.randn(4, 4), torch.arange(start, start + 4))
    sd = c.state_dict()
    assert set(sd) == {"queue_embedding", "queue_proxy", "queue_label", "queue_index", "queue_ptr"}
    fresh = QGFaceContrast(4, queue_size=6, quality_scale=0.5)
    fresh.load_state_dict(sd)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k
    args = (torch.randn(2, 4), torch.randn(2, 4), torch.tensor([-0.9, 0.5]), torch.tensor([0.1, 0.2]))
    rest = (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.randn(12, 4))
    a, b = c(*args, *rest), fresh(*args, *rest)
    assert float(a.loss) == float(b.loss) and a.num_negatives == 6
    with pytest.raises(RuntimeError, match="size mismatch"):
        QGFaceContrast(4, queue_size=7).load_state_dict(sd)


def test_contrast_forward_gates_pairs_by_their_worse_view():
    c = QGFaceContrast(2, queue_size=8, s=4.0, quality_scale=0.5)
    c.enqueue(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1]))
    out = c(
        torch.eye(2),
        torch.eye(2),
        torch.tensor([-0.5, 0.5]),
        torch.tensor([0.9, 0.9]),
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
    )
    assert out.gate.tolist() == [1.0, 0.0]  # q = 0.25 < 0.5 is contrasted; q = min(0.75, 0.95) is not
    assert out.num_negatives == 2


# ---- gathered enqueue under a 2-process gloo group ------------------------------------------------------
def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = 2 + rank  # uneven batches: 2 and 3 rows
        c = QGFaceContrast(3, queue_size=8)
        labels = torch.arange(n) + 10 * rank
        emb = torch.full((n, 3), float(rank + 1))
        c.enqueue(emb, labels, emb * 2, labels + 100)
        c.enqueue(emb, labels + 1, emb * 2, labels + 200)  # 10 rows in all: wraps the 8-slot queue
        x = all_gather_cat(torch.tensor([[rank, rank]]))
        torch.save({"state": c.state_dict(), "gathered": x}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_enqueue_is_gathered_across_a_two_process_gloo_group(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k  # every rank holds the same queue
    assert r0["gathered"].tolist() == [[0, 0], [1, 1]]
    st = r0["state"]
    # step 1: rank 0's labels 0, 1 then rank 1's 10, 11, 12 in slots 0..4; step 2 (5 rows) wraps: slots 5, 6, 7, 0, 1
    assert st["queue_label"].tolist() == [12, 13, 10, 11, 12, 1, 2, 11]
    assert st["queue_index"].tolist() == [211, 212, 110, 111, 112, 200, 201, 210]
    assert int(st["queue_ptr"]) == 2
    rank_of_slot = [1, 1, 1, 1, 1, 0, 0, 1]  # rank r's embeddings are (r + 1) * ones, stored normalised
    for slot, r in enumerate(rank_of_slot):
        torch.testing.assert_close(st["queue_proxy"][slot], torch.full((3,), 2.0 * (r + 1)))
