"""Partial FC (``head.fc=partial``): sharding formula, sampling, the distributed cross-entropy, parity
with the full head in one process and across 2 spawned CPU ranks (gloo), and checkpoints that re-shard
between world sizes through ``main.py``."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from fiqa.heads import margins
from fiqa.heads.adaface import AdaFaceHead, adaface_logits
from fiqa.heads.eqface import EQFaceHead
from fiqa.heads.fc import ArcFaceHead, CombinedHead, CosFaceHead, HeadOutput
from fiqa.heads.magface import MagFaceHead, mag_logits, magnitude_regularizer
from fiqa.heads.partial_fc import PartialInfo, ShardInfo, cross_entropy, sample_classes, shard_range
from fiqa.heads.partial_fc_module import clip_gradients, gather_optimizer_state, shard_optimizer_state
from fiqa.heads.qgface import QGFaceHead
from fiqa.quality.crfiqa import certainty_ratio, target_scores

C, D = 11, 8
HEADS = {
    "arcface": lambda **kw: ArcFaceHead(C, D, **kw),
    "cosface": lambda **kw: CosFaceHead(C, D, **kw),
    "combined": lambda **kw: CombinedHead(C, D, m1=0.9, margin=0.4, m3=0.15, **kw),
    "magface": lambda **kw: MagFaceHead(C, D, **kw),
    "adaface": lambda **kw: AdaFaceHead(C, D, **kw),
}


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, D, generator=g)
    emb = emb / emb.norm(dim=1, keepdim=True) * torch.linspace(12.0, 90.0, n).view(-1, 1)  # MagFace's [l_a, u_a]
    labels = torch.randint(0, C, (n,), generator=g)
    return emb, labels


def _id_loss(name, head, out, labels):
    """The method's loss on the head's output (MagFace adds lambda_g * mean g(a) on this rank's rows)."""
    loss = cross_entropy(out, labels)
    if name == "magface":
        loss = loss + 35.0 * magnitude_regularizer(out.norm, head.u_a).mean()
    return loss


# ---- the formulas -----------------------------------------------------------------------------
def test_shard_range_is_arcface_torchs():
    # C=10, W=4: C//W = 2, C%W = 2 -> ranks 0,1 get 3 classes, ranks 2,3 get 2: starts 0, 3, 6, 8
    assert [shard_range(10, r, 4) for r in range(4)] == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert shard_range(7, 0, 1) == (0, 7)
    assert shard_range(7, 1, 2) == (4, 3)
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        shard_range(7, 2, 2)


def test_distributed_cross_entropy_by_hand():
    """One process: the mean of logsumexp(z) - z_y, worked out with math, and the gradient
    (softmax - onehot) / N."""
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([2, 0])
    out = HeadOutput(logits, logits.detach(), partial=PartialInfo(labels, slice(0, 2), ShardInfo.of(3, 0, 1)))
    loss = cross_entropy(out, labels)
    row0 = math.log(math.e + math.e**2 + math.e**3) - 3.0
    row1 = math.log(math.exp(0.5) + math.exp(-1.0) + 1.0) - 0.5
    assert float(loss.detach()) == pytest.approx((row0 + row1) / 2, abs=1e-6)
    loss.backward()
    e0 = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    e1 = [math.exp(v) for v in (0.5, -1.0, 0.0)]
    want = [[e0[0] / sum(e0) / 2, e0[1] / sum(e0) / 2, (e0[2] / sum(e0) - 1) / 2],
            [(e1[0] / sum(e1) - 1) / 2, e1[1] / sum(e1) / 2, e1[2] / sum(e1) / 2]]  # fmt: skip
    torch.testing.assert_close(logits.grad, torch.tensor(want), rtol=0, atol=1e-6)


def test_label_minus_one_gets_no_margin():
    """A row whose target is in another shard (label -1) keeps s * cos (each margin clamps cos first)."""
    cos = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.7, -0.4]])
    labels = torch.tensor([-1, 1])
    for logits, s in (
        (margins.arcface(cos, labels, s=64.0, margin=0.5), 64.0),
        (mag_logits(cos, labels, torch.tensor([20.0, 30.0])), 64.0),
        (adaface_logits(cos, labels, torch.tensor([0.2, -0.3]), s=32.0, m=0.4), 32.0),
    ):
        torch.testing.assert_close(logits[0], s * cos[0])
        assert abs(float(logits[1, 1]) - s * 0.7) > 1.0  # the other row's target did get its margin
    # row 1 of ArcFace by hand: 64 * cos(acos(0.7) + 0.5)
    assert float(margins.arcface(cos, labels)[1, 1]) == pytest.approx(64 * math.cos(math.acos(0.7) + 0.5), abs=1e-4)


# ---- (a) one process, sample_rate=1: identical to the full head -------------------------------
@pytest.mark.parametrize("name", list(HEADS))
def test_one_process_equals_full_head(name):
    torch.manual_seed(0)
    full = HEADS[name]()
    part = HEADS[name](fc="partial", sample_rate=1.0)
    part.load_state_dict(full.state_dict())
    full.train(), part.train()
    emb, labels = _batch(9)
    e_full, e_part = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    out_full, out_part = full(e_full, labels), part(e_part, labels)
    assert out_part.partial is not None and out_full.partial is None
    l_full = _id_loss(name, full, out_full, labels)
    l_part = _id_loss(name, part, out_part, labels)
    l_full.backward(), l_part.backward()
    torch.testing.assert_close(l_part, l_full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(part.weight.grad, full.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(e_part.grad, e_full.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_part.logits, out_full.logits, rtol=1e-6, atol=1e-6)
    if out_full.norm is not None:
        torch.testing.assert_close(out_part.norm, out_full.norm)
    if name == "adaface":
        torch.testing.assert_close(out_part.ms, out_full.ms)
        torch.testing.assert_close(part.batch_mean, full.batch_mean)
        torch.testing.assert_close(part.batch_std, full.batch_std)


def test_one_process_crfiqa_scores_equal_full_head():
    torch.manual_seed(1)
    full = ArcFaceHead(C, D)
    part = ArcFaceHead(C, D, fc="partial")
    part.load_state_dict(full.state_dict())
    emb, labels = _batch(9, seed=3)
    ccs_f, nn_f = target_scores(full(emb, labels), labels)
    ccs_p, nn_p = target_scores(part(emb, labels), labels)
    torch.testing.assert_close(ccs_p, ccs_f, rtol=0, atol=1e-7)
    torch.testing.assert_close(nn_p, nn_f, rtol=0, atol=1e-7)
    _, ccs_ref, nn_ref = certainty_ratio(full(emb, labels).cosine, labels)  # the original's definition
    torch.testing.assert_close(ccs_f, ccs_ref), torch.testing.assert_close(nn_f, nn_ref)
    # by hand on row 0: the cosine to its own centre, and the largest cosine to another centre
    cos0 = F.normalize(emb[0], dim=0) @ F.normalize(full.weight.detach(), dim=1).T
    assert float(ccs_p[0]) == pytest.approx(float(cos0[labels[0]]), abs=1e-6)
    others = torch.cat([cos0[: labels[0]], cos0[labels[0] + 1 :]])
    assert float(nn_p[0]) == pytest.approx(max(float(others.max()), -1e-12), abs=1e-6)


# ---- (b) sampling ---------------------------------------------------------------------------------
def test_sampling_keeps_every_positive_and_remaps_labels():
    labels = torch.tensor([3, 17, -1, 3, 25, -1, 0])  # local labels of a shard of 30 classes
    g = torch.Generator().manual_seed(0)
    index, remapped = sample_classes(labels, 30, 0.2, generator=g)
    assert index.numel() == 6  # int(0.2 * 30)
    assert torch.equal(index, index.sort().values)
    assert {0, 3, 17, 25} <= set(index.tolist())
    valid = labels >= 0
    assert torch.equal(index[remapped[valid]], labels[valid])
    assert torch.equal(remapped[~valid], labels[~valid])
    # more positives than the sample size: exactly the positives
    index, remapped = sample_classes(labels, 30, 0.05)
    assert index.tolist() == [0, 3, 17, 25]
    assert remapped.tolist() == [1, 2, -1, 1, 3, -1, 0]


def test_sampled_head_trains_only_the_kept_centres():
    torch.manual_seed(0)
    head = ArcFaceHead(40, D, fc="partial", sample_rate=0.25).train()
    emb, _ = _batch(6)
    labels = torch.tensor([5, 5, 31, 2, 39, 17])
    out = head(emb.requires_grad_(), labels)
    index = out.partial.index
    assert out.logits.shape == (6, 10) and index.numel() == 10
    assert {2, 5, 17, 31, 39} <= set(index.tolist())
    assert torch.equal(index[out.partial.labels], labels)
    cross_entropy(out, labels).backward()
    touched = head.weight.grad.abs().sum(1) > 0
    assert set(touched.nonzero().squeeze(1).tolist()) == set(index.tolist())
    # the loss equals the full softmax restricted to the kept columns
    cos = F.normalize(emb.detach(), dim=1) @ F.normalize(head.weight.detach()[index], dim=1).T
    ref = F.cross_entropy(margins.arcface(cos, out.partial.labels), out.partial.labels)
    assert float(cross_entropy(out, labels).detach()) == pytest.approx(float(ref), abs=1e-5)
    head.eval()  # no sampling outside training
    assert head(emb.detach(), labels).logits.shape == (6, 40)


# ---- configuration errors ---------------------------------------------------------------------------
def test_bad_settings_are_refused_with_the_key():
    with pytest.raises(ValueError, match=r"head.fc must be one of \['full', 'partial'\]"):
        ArcFaceHead(C, D, fc="sharded")
    with pytest.raises(ValueError, match=r"head.sample_rate must be in \(0, 1\]"):
        ArcFaceHead(C, D, fc="partial", sample_rate=0.0)
    with pytest.raises(ValueError, match="needs head.fc=partial"):
        CosFaceHead(C, D, sample_rate=0.5)
    for cls in (EQFaceHead, QGFaceHead):
        with pytest.raises(ValueError, match=r"head.fc=partial is not supported .*head=arcface\|cosface"):
            cls(C, D, fc="partial")
    head = ArcFaceHead(3, D, fc="partial")
    with pytest.raises(ValueError, match="at least one class per rank"):
        head.shard(rank=3, world_size=4)
    with pytest.raises(RuntimeError, match="head.fc=partial"):
        ArcFaceHead(C, D).shard()


def test_one_process_state_dict_is_the_full_weight():
    head = MagFaceHead(C, D, fc="partial")
    head.shard()
    sd = head.state_dict()
    assert sd["weight"].shape == (C, D) and sd["weight"].data_ptr() == head.weight.data_ptr()
    other = MagFaceHead(C, D)
    other.load_state_dict(sd)
    assert torch.equal(other.weight, head.weight)


# ---- (c) 2 CPU ranks (spawned, gloo) ----------------------------------------------------------------
def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        sizes = (5, 3)  # unequal batches (padding in the gather); C=11 -> shards of 6 and 5 classes
        emb, labels = _batch(sum(sizes), seed=7)
        rows = slice(0, 5) if rank == 0 else slice(5, 8)
        for name in HEADS:
            torch.manual_seed(0)
            head = HEADS[name](fc="partial").train()
            head.shard()
            e = emb[rows].clone().requires_grad_()
            out = head(e, labels[rows])
            loss = _id_loss(name, head, out, labels[rows])
            loss.backward()
            results[name] = {
                "loss": loss.detach(),
                "weight_grad": head.weight.grad,
                "emb_grad": e.grad,
                "norm": out.norm,
                "state_weight": head.state_dict()["weight"],
            }
            if name == "adaface":
                results[name]["stats"] = torch.cat([head.batch_mean, head.batch_std])
            if name == "arcface":
                results[name]["ccs"], results[name]["nnccs"] = target_scores(out, labels[rows])
                # a full weight loaded into the shards: each rank keeps its rows
                new = torch.arange(C * D, dtype=torch.float32).view(C, D)
                head.load_state_dict({"weight": new})
                results[name]["loaded"] = head.weight.detach().clone()
                # the optimizer state: SGD momentum gathered to (C, D), then cut back to this rank's rows
                opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
                opt.step()
                holder = torch.nn.Module()
                holder.head, holder._trainer = head, type("T", (), {"optimizers": [opt]})()
                ckpt = {"optimizer_states": [opt.state_dict()]}
                gather_optimizer_state(holder, ckpt)
                results[name]["momentum_full"] = ckpt["optimizer_states"][0]["state"][0]["momentum_buffer"]
                results[name]["momentum_live"] = opt.state[head.weight]["momentum_buffer"].clone()
                opt.state[head.weight]["momentum_buffer"] = results[name]["momentum_full"].clone()
                shard_optimizer_state(holder)
                results[name]["momentum_resharded"] = opt.state[head.weight]["momentum_buffer"]
                # gradient-norm clipping: the norm over both shards + the (replicated) backbone
                holder.backbone = torch.nn.Linear(D, 3)
                holder.backbone.weight.grad = torch.full((3, D), 0.5)
                holder.backbone.bias.grad = torch.full((3,), -0.25)
                head.weight.grad = results[name]["weight_grad"].clone()
                opt = torch.optim.SGD([*holder.backbone.parameters(), head.weight], lr=0.1)
                holder._trainer.optimizers = [opt]
                assert clip_gradients(holder, opt, 1.0, "norm") is not None
                results[name]["clipped"] = [holder.backbone.weight.grad, holder.backbone.bias.grad, head.weight.grad]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_the_full_head_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1)]
    emb, labels = _batch(8, seed=7)
    for name in HEADS:
        torch.manual_seed(0)
        full = HEADS[name]().train()  # the same initial centres as the sharded heads (built whole, then cut)
        e = emb.clone().requires_grad_()
        out = full(e, labels)  # one forward (AdaFace's statistics move once, as on the ranks)
        ce = cross_entropy(out, labels)
        w_grad, e_grad = torch.autograd.grad(ce, [full.weight, e], retain_graph=True)
        want_e = 2 * e_grad  # the id gradient of a rank's rows, summed over the ranks, x W (DDP then averages)
        for i, rows in ((0, slice(0, 5)), (1, slice(5, 8))):
            own = r[i][name]["loss"]
            if name == "magface":  # each rank adds 35 * mean g(a) of its own rows; its gradient stays local
                g = 35.0 * magnitude_regularizer(out.norm[rows], full.u_a).mean()
                own = own - g.detach()
                want_e = want_e + torch.autograd.grad(g, e, retain_graph=True)[0]
            torch.testing.assert_close(own, ce.detach(), rtol=1e-6, atol=1e-6, msg=name)  # global-batch CE
        grad = torch.cat([r[0][name]["weight_grad"], r[1][name]["weight_grad"]])  # shards in class order
        torch.testing.assert_close(grad, w_grad, rtol=1e-5, atol=1e-6, msg=name)
        got_e = torch.cat([r[0][name]["emb_grad"], r[1][name]["emb_grad"]])
        torch.testing.assert_close(got_e, want_e, rtol=1e-5, atol=1e-6, msg=name)
        for i in (0, 1):  # state_dict(): the full (C, D) on both ranks (here the initial weight)
            torch.testing.assert_close(r[i][name]["state_weight"], full.weight.detach())
        if name == "adaface":  # statistics of the global batch, the same on both ranks
            torch.testing.assert_close(r[0][name]["stats"], r[1][name]["stats"])
            torch.testing.assert_close(r[0][name]["stats"], torch.cat([full.batch_mean, full.batch_std]))
        if name == "arcface":  # CR-FIQA's CCS / NNCCS of each rank's rows equal the full head's
            ccs, nnccs = target_scores(out, labels)
            torch.testing.assert_close(torch.cat([r[0][name]["ccs"], r[1][name]["ccs"]]), ccs)
            torch.testing.assert_close(torch.cat([r[0][name]["nnccs"], r[1][name]["nnccs"]]), nnccs)
    a = [r[0]["arcface"], r[1]["arcface"]]
    new = torch.arange(C * D, dtype=torch.float32).view(C, D)
    assert torch.equal(a[0]["loaded"], new[:6]) and torch.equal(a[1]["loaded"], new[6:])
    live = torch.cat([a[0]["momentum_live"], a[1]["momentum_live"]])
    assert live.abs().sum(1).gt(0).all()
    for i in (0, 1):
        assert a[i]["momentum_full"].shape == (C, D)
        torch.testing.assert_close(a[i]["momentum_full"], live)
    torch.testing.assert_close(a[0]["momentum_resharded"], live[:6])
    torch.testing.assert_close(a[1]["momentum_resharded"], live[6:])
    # clipping: the same factor on both ranks, that of one process holding the whole head
    bw, bb = torch.full((3, D), 0.5), torch.full((3,), -0.25)
    hw = torch.cat([a[0]["weight_grad"], a[1]["weight_grad"]])
    total = math.sqrt(float(bw.square().sum() + bb.square().sum() + hw.square().sum()))
    assert total > 1.0  # clipping acts
    for i, rows in ((0, slice(0, 6)), (1, slice(6, 11))):
        got_bw, got_bb, got_hw = a[i]["clipped"]
        torch.testing.assert_close(got_bw, bw / (total + 1e-6))
        torch.testing.assert_close(got_bb, bb / (total + 1e-6))
        torch.testing.assert_close(got_hw, hw[rows] / (total + 1e-6))


# ---- (d) checkpoints through main.py: 2 ranks <-> 1 process ------------------------------------------
def _last(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _head_state(ckpt: dict, num_classes: int) -> tuple[torch.Tensor, list]:
    """(head.weight, the optimizer-state tensors shaped like it: SGD's momentum of the head)."""
    weight = ckpt["state_dict"]["head.weight"]
    momentum = [
        v["momentum_buffer"]
        for opt in ckpt["optimizer_states"]
        for v in opt["state"].values()
        if v.get("momentum_buffer") is not None and v["momentum_buffer"].shape[0] == num_classes
    ]
    return weight, momentum


@pytest.mark.slow
def test_checkpoints_reshard_between_two_ranks_and_one(tmp_path):
    """A 2-rank Partial FC run writes the full (C, D) head (and its momentum); it resumes and evaluates
    in one process, and a 1-process checkpoint resumes and evaluates on 2 ranks. ``lr=0`` keeps the
    weights at their initial values, which do not depend on the world size, so every run's head must
    equal, row for row, the others: a gather or a re-shard in the wrong order would show."""
    from fiqa.methods.loading import load_model
    from tests.helpers.run_main import TINY, TINY_VAL, run_main

    n_cls = 15  # odd: shards of 8 and 7 classes
    tiny = [o for o in TINY if not o.startswith(("trainer=", "trainer.max_epochs", "data.train.num_identities"))]
    pfc = [
        *tiny,
        f"data.train.num_identities={n_cls}",
        "method=arcface",
        "head.fc=partial",
        "head.sample_rate=0.5",
        "optim.optimizer.lr=0",
        "val=[]",
        "callbacks.model_checkpoint.monitor=null",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    run_main(*pfc, "trainer=ddp_sim", "trainer.max_epochs=1", f"hydra.run.dir={two}")
    run_main(*pfc, "trainer=cpu", "trainer.max_epochs=1", f"hydra.run.dir={one}")
    w2, m2 = _head_state(_last(two), n_cls)
    w1, m1 = _head_state(_last(one), n_cls)
    assert w2.shape == (n_cls, w2.shape[1]) and w2.shape == w1.shape
    assert torch.equal(w2, w1)
    assert len(m2) == 1 and m2[0].shape == w2.shape and m2[0].abs().sum(1).gt(0).all()

    # 2 ranks -> 1 process: resume (one more epoch) and evaluate; init_ckpt's loader
    resumed1 = tmp_path / "resumed1"
    run_main(*pfc, "trainer=cpu", "trainer.max_epochs=2", f"ckpt_path={two / 'checkpoints' / 'last.ckpt'}",
             f"hydra.run.dir={resumed1}")  # fmt: skip
    ckpt = _last(resumed1)
    w, m = _head_state(ckpt, n_cls)
    assert ckpt["global_step"] > _last(two)["global_step"]
    assert torch.equal(w, w2) and m[0].shape == w2.shape
    run_main("task=eval", f"ckpt_path={two / 'checkpoints' / 'last.ckpt'}", "trainer=cpu", "data.num_workers=0",
             "callbacks.progress=null", *TINY_VAL, f"hydra.run.dir={tmp_path / 'eval1'}")  # fmt: skip
    assert (tmp_path / "eval1" / "metrics.json").is_file()
    model = load_model(str(two / "checkpoints" / "last.ckpt"))
    assert model.head.fc == "partial" and torch.equal(model.head.weight.detach(), w2)

    # 1 process -> 2 ranks: resume (the (C, D) momentum is cut to each rank's rows) and evaluate
    resumed2 = tmp_path / "resumed2"
    run_main(*pfc, "trainer=ddp_sim", "trainer.max_epochs=2", f"ckpt_path={one / 'checkpoints' / 'last.ckpt'}",
             f"hydra.run.dir={resumed2}")  # fmt: skip
    ckpt = _last(resumed2)
    w, m = _head_state(ckpt, n_cls)
    assert ckpt["global_step"] > _last(one)["global_step"]
    assert torch.equal(w, w1) and len(m) == 1 and m[0].shape == w1.shape
    run_main("task=eval", f"ckpt_path={one / 'checkpoints' / 'last.ckpt'}", "trainer=ddp_sim", "data.num_workers=0",
             "callbacks.progress=null", *TINY_VAL, f"hydra.run.dir={tmp_path / 'eval2'}")  # fmt: skip
    assert (tmp_path / "eval2" / "metrics.json").is_file()
