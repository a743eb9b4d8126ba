"""The shared training programme (codec/training): task loss, dev sets, resumable loop,
and tools/train_fenet end to end on a few real training images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from codec.training import data as tdata
from codec.training.loop import Checkpoint, MinuteLog, RunState, train
from codec.training.task import NanoDetHeadLoss, TaskLossConfig, TaskLossError, YoloV5SegHeadLoss, task_loss_for


@pytest.fixture(scope="module")
def neck_features(nanodet, val_image):
    x, prep = nanodet.preprocess(val_image)
    feats = nanodet.part1(x, "neck")
    return [f.clone() for f in feats.values()], prep


def test_task_loss_is_zero_on_the_original_and_grows_with_the_error(nanodet, neck_features):
    feats, _ = neck_features
    loss = task_loss_for(nanodet, "neck")
    teacher = loss.teacher(feats)
    total0, cls0, box0 = loss(feats, teacher)
    assert float(total0) < 1e-6 and float(cls0) < 1e-6 and float(box0) < 1e-6
    g = torch.Generator().manual_seed(0)
    small = [f + 0.05 * f.std() * torch.randn(f.shape, generator=g) for f in feats]
    large = [f + 0.5 * f.std() * torch.randn(f.shape, generator=g) for f in feats]
    t_small, t_large = float(loss(small, teacher)[0]), float(loss(large, teacher)[0])
    assert 0 < t_small < t_large


def test_task_loss_passes_gradients_to_the_codec_but_not_the_heads(nanodet, neck_features):
    feats, _ = neck_features
    loss = NanoDetHeadLoss(nanodet, "neck")
    teacher = loss.teacher(feats)
    rec = [(f * 0.9).requires_grad_(True) for f in feats]
    loss(rec, teacher)[0].sum().backward()
    assert all(r.grad is not None and float(r.grad.abs().sum()) > 0 for r in rec)
    assert all(p.grad is None for p in loss.head.parameters())


def test_task_loss_refuses_a_split_without_heads(nanodet):
    with pytest.raises(TaskLossError):
        task_loss_for(nanodet, "backbone")


def test_task_loss_refuses_an_unknown_network(nanodet):
    class Other:
        name = "resnet"

    with pytest.raises(TaskLossError, match="no task loss for network 'resnet'.*nanodet.*yolov5s_seg"):
        task_loss_for(Other(), "neck")
    with pytest.raises(TaskLossError, match="YOLOv5s-seg's neck"):
        YoloV5SegHeadLoss(nanodet, "neck")  # the YOLO loss on another network's heads


@pytest.fixture(scope="module")
def seg_features(yolov5_seg, val_image):
    x, _ = yolov5_seg.preprocess(val_image)
    return [f.clone() for f in yolov5_seg.part1(x, "neck").values()]


def _crop(feats, cells):
    return [f[..., : cells * r, : cells * r] for f, r in zip(feats, (4, 2, 1))]


def test_yolov5_seg_task_loss_is_zero_on_the_original_and_grows_with_the_error(yolov5_seg, seg_features):
    loss = task_loss_for(yolov5_seg, "neck")
    assert isinstance(loss, YoloV5SegHeadLoss)
    feats = _crop(seg_features, 12)  # 96 x 96 p3 cells: the proto term on a random 32 x 32 window
    teacher = loss.teacher(feats)
    assert teacher.window is not None and teacher.window[2] == 32
    assert sum(len(r) for r in teacher.rows) > 0  # the image has objects: some anchors are kept
    total0, cls0, box0 = loss(feats, teacher)
    assert float(total0) == 0.0 and float(cls0) == 0.0 and float(box0) == 0.0
    g = torch.Generator().manual_seed(0)
    small = [f + 0.05 * f.std() * torch.randn(f.shape, generator=g) for f in feats]
    large = [f + 0.5 * f.std() * torch.randn(f.shape, generator=g) for f in feats]
    s_total, s_cls, s_box = loss(small, teacher)
    l_total = loss(large, teacher)[0]
    assert 0 < float(s_cls) and 0 < float(s_box) and 0 < float(s_total) < float(l_total)


def test_yolov5_seg_task_loss_terms_and_gradients(yolov5_seg, seg_features):
    feats = _crop(seg_features, 8)
    g = torch.Generator().manual_seed(1)
    noisy = [f + 0.2 * f.std() * torch.randn(f.shape, generator=g) for f in feats]
    # the prototype term alone: only the Proto branch's output differs
    no_proto = YoloV5SegHeadLoss(yolov5_seg, "neck", TaskLossConfig(proto_weight=0.0, proto_window=0))
    with_proto = YoloV5SegHeadLoss(yolov5_seg, "neck", TaskLossConfig(proto_weight=1.0, proto_window=0))
    t0, t1 = no_proto.teacher(feats), with_proto.teacher(feats)
    assert t0.window is None and t1.proto.shape[-2:] == (64, 64)  # all of p3 (32 x 32), twice up
    a, b = no_proto(noisy, t0), with_proto(noisy, t1)
    assert torch.allclose(a[1], b[1]) and float(b[2]) > float(a[2])
    rec = [n.clone().requires_grad_(True) for n in noisy]
    with_proto(rec, t1)[0].sum().backward()
    assert all(r.grad is not None and float(r.grad.abs().sum()) > 0 for r in rec)
    assert all(p.grad is None for p in with_proto.head.parameters())


def test_yolov5_seg_task_loss_is_per_sample(yolov5_seg, seg_features):
    """Per-sample figures, each normalised by its own teacher confidence: a batch of two copies
    gives each the figure of one."""
    loss = YoloV5SegHeadLoss(yolov5_seg, "neck", TaskLossConfig(proto_window=0))
    feats = _crop(seg_features, 8)
    g = torch.Generator().manual_seed(2)
    noisy = [f + 0.2 * f.std() * torch.randn(f.shape, generator=g) for f in feats]
    one = loss(noisy, loss.teacher(feats))[0]
    two = loss([torch.cat([n, n]) for n in noisy], loss.teacher([torch.cat([f, f]) for f in feats]))[0]
    assert two.shape == (2,) and torch.allclose(two, one.expand(2), rtol=1e-4)


def train_image_folder(tmp_path, assets, count: int):
    """A folder of the first `count` training images (a small training set for the trainers)."""
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((assets / "train-images").rglob("*.jpg"))[:count]:
        shutil.copy(p, images / p.name)
    return images


def test_split_is_deterministic_and_disjoint():
    files = [f"img{i:03d}.jpg" for i in range(50)]
    train_a, held_a = tdata.split_train_images(files, 8, 0)
    train_b, held_b = tdata.split_train_images(files, 8, 0)
    assert (train_a, held_a) == (train_b, held_b)
    assert len(held_a) == 8 and not set(train_a) & set(held_a) and len(train_a) + 8 == 50
    with pytest.raises(tdata.TrainingDataError):
        tdata.split_train_images(files, 50, 0)


def _toy_run(tmp_path, steps: int, resume: bool):
    """A tiny regression model trained by codec.training.loop.train (batches from the RNG)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)
    rng = np.random.default_rng(1)
    ck = Checkpoint(tmp_path / "toy.ckpt", {"model": model, "opt": opt, "sched": sched}, rng)
    state = ck.load() if resume else RunState()
    w_true = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

    def step_fn(step):
        x = torch.from_numpy(rng.normal(size=(16, 4))).float()
        loss = ((model(x) - x @ w_true.t()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": float(loss.detach())}

    figures = iter(range(100))
    state = train(
        state=state,
        steps=steps,
        step_fn=step_fn,
        lr_fn=lambda: sched.get_last_lr()[0],
        checkpoint=ck,
        log=MinuteLog(tmp_path / "toy.log"),
        dev_every_min=1e-9,
        dev_fn=lambda st: (float(next(figures)), {}),
    )
    return model, state


def test_loop_resume_is_exact(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight, st = _toy_run(tmp_path / "a", 20, False)
    _toy_run(tmp_path / "b", 8, False)
    resumed, st2 = _toy_run(tmp_path / "b", 20, True)
    assert st.step == st2.step == 20
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    # one dev evaluation per step (dev_every tiny), the best is the last (figures increase)
    assert st.best_step == 20 and len(st.dev_history) == 20
    assert (tmp_path / "a" / "toy.log").read_text().count("dev step") == 20


def test_train_fenet_end_to_end_and_resume(tmp_path, assets, monkeypatch):
    """6 real training images, 1 view: a cache, 2 steps, a dev evaluation through the
    container on 2 held-out images, a weights file that the mode loads, and its record;
    then --resume continues the same run."""
    from tools import train_fenet

    images = train_image_folder(tmp_path, assets, 6)
    out = tmp_path / "run" / "f.pt"
    args = [
        "--images",
        str(images),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--views",
        "1",
        "--holdout",
        "2",
        "--width",
        "8",
        "--latent-channels",
        "8",
        "--hyper-channels",
        "8",
        "--lambdas",
        "0.1,1",
        "--task-weight",
        "1",
        "--steps",
        "2",
        "--batch",
        "2",
        "--dev-every",
        "1e-9",
        "--dev-phis",
        "0,1",
        "--out",
        str(out),
    ]
    assert train_fenet.main(args) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["steps"] == 2 and rec["data"]["train_count"] == 4 and rec["data"]["holdout_count"] == 2
    assert rec["dev"]["uncompressed"]["map50"] == pytest.approx(1.0)  # the pseudo-labels are its own detections
    hist = rec["dev"]["history"]
    assert [h["step"] for h in hist] == [1, 2] and set(hist[0]["per_phi"]) == {"0", "1"}
    assert all(v["bpp"] > 0 for v in hist[0]["per_phi"].values())
    from codec.models.fenet import file_sha256, load_fenet

    assert rec["weights_sha256"] == file_sha256(out)
    model, _ = load_fenet(out)
    assert model.cfg.latent_channels == 8
    assert train_fenet.main([*args[:-4], "--steps", "3", "--resume", "--dev-phis", "0", "--out", str(out)]) == 0
    rec2 = json.loads(out.with_suffix(".json").read_text())
    assert rec2["steps"] == 3 and [h["step"] for h in rec2["dev"]["history"]] == [1, 2, 3]
    # a changed loss: --reset-best forgets the earlier figures; the final state is evaluated and wins
    argv = [*args[:-4], "--steps", "3", "--resume", "--reset-best", "--dev-phis", "0", "--out", str(out)]
    assert train_fenet.main(argv) == 0
    rec3 = json.loads(out.with_suffix(".json").read_text())
    assert rec3["steps"] == 3 and rec3["dev"]["best_step"] == 3
    assert {"step": 3, "reset_best": True} in rec3["dev"]["history"]
    assert len(rec3["calls"]) == 3 and "--reset-best" in rec3["calls"][-1]["command"]

    # channel-importance groups from that run's weights: the channels are renumbered by their
    # measured importance, the model codes y in the groups, and a resumed run keeps the record
    g_out = tmp_path / "grouped" / "g.pt"
    g_args = [*args[:-4], "--steps", "3", "--init", str(out), "--channel-groups", "2,2,4"]
    g_args += ["--importance-batches", "1", "--dev-phis", "0", "--out", str(g_out)]
    assert train_fenet.main(g_args) == 0
    g_rec = json.loads(g_out.with_suffix(".json").read_text())
    imp = g_rec["channel_importance"]
    assert sorted(imp["order"]) == list(range(8)) and len(imp["group_shares"]) == 3
    assert imp["importance_sorted"] == sorted(imp["importance_sorted"], reverse=True)
    grouped, _ = load_fenet(g_out)
    assert grouped.cfg.channel_groups == (2, 2, 4)
    assert train_fenet.main([*g_args[:-2], "--steps", "4", "--resume", "--out", str(g_out)]) == 0
    g_rec2 = json.loads(g_out.with_suffix(".json").read_text())
    assert g_rec2["steps"] == 4 and g_rec2["channel_importance"] == imp
    assert train_fenet.main([*args[:-4], "--channel-groups", "3,3", "--init", str(out), "--out", str(g_out)]) == 2


def test_eval_fenet_reports_uncompressed_ceiling_and_rate_points(tmp_path, assets, capsys):
    """tools/eval_fenet on the first 3 val2017-103 images with the shipped default model."""
    from codec.models.registry import WEIGHTS_DIR
    from tools import eval_fenet

    out = tmp_path / "eval.json"
    weights = WEIGHTS_DIR / "fenet_nanodet_neck_p4.pt"
    argv = ["--weights", str(weights), "--dataset", "val2017-103", "--limit", "3", "--phis", "0,5", "--json", str(out)]
    assert eval_fenet.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["images"] == 3 and rec["ceiling"]["phi"] == 5
    assert 0 < rec["uncompressed"]["map50"] <= 1 and 0 <= rec["ceiling"]["map50"] <= 1
    assert set(rec["per_phi"]) == {"0", "5"} and rec["per_phi"]["0"]["bpp"] < rec["per_phi"]["5"]["bpp"]
    assert "ceiling (no quantisation, gains of phi 5)" in capsys.readouterr().out


def test_ablation_table_lists_every_run(tmp_path, capsys):
    from tools import ablation_table

    scales = [{"name": n, "channels": 128, "stride": s} for n, s in (("p3", 8), ("p4", 16), ("p5", 32))]
    for name, latent_scale, loss in (
        ("a", -1, {"feature_weight": 1.0, "task_weight": 0.0}),
        ("b", 1, {"feature_weight": 0.0, "task_weight": 1.0, "ceiling": True}),
    ):
        run = tmp_path / name
        run.mkdir()
        cfg = {"scales": scales, "width": 64, "latent_channels": 128, "latent_scale": latent_scale}
        if name == "b":
            cfg["channel_groups"] = [8, 8, 16, 32, 64]
        (run / "f.json").write_text(
            json.dumps({"config": cfg, "loss": loss, "steps": 10, "train_hours": 0.5, "dev": {"best_figure": 0.9}})
        )
    (tmp_path / "b" / "eval_val.json").write_text(
        json.dumps({"uncompressed": {"map50": 0.4}, "ceiling": {"map50": 0.38}})
    )
    assert ablation_table.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 4
    assert "| a | rate-distortion | feature MSE only | 32 |" in rows[2]
    assert "| b | transform only (ceiling) | task only | 16 |" in rows[3] and "0.3800 (95.0 %)" in rows[3]
    assert "| checkerboard |" in rows[2] and "| channel groups 8/8/16/32/64 + checkerboard |" in rows[3]
    assert ablation_table.main([str(tmp_path / "missing")]) == 2


def test_train_msff_end_to_end_ceiling_and_resume(tmp_path, assets):
    """tools/train_msff on the shared programme: 6 real training images, 2 steps with the
    task loss, a dev evaluation through vvc_msff's container path on 2 held-out images,
    a weights file the mode loads, its record, --resume, and a ceiling run."""
    from codec.inner import vvc
    from tools import train_msff

    if not vvc.ffmpeg_supports_vvc():
        pytest.skip("ffmpeg without libvvenc / VVC decoder")
    images = train_image_folder(tmp_path, assets, 6)
    out = tmp_path / "run" / "m.pt"
    args = [
        "--images", str(images), "--cache-dir", str(tmp_path / "cache"), "--views", "1", "--holdout", "2",
        "--fused-channels", "8", "--width", "8", "--linear-path", "--pca-views", "4", "--task-weight", "1",
        "--batch", "2", "--dev-every", "1e-9", "--dev-qps", "37", "--steps", "2", "--out", str(out),
    ]  # fmt: skip
    assert train_msff.main(args) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["steps"] == 2 and rec["data"]["train_count"] == 4 and rec["loss"]["task_weight"] == 1
    hist = rec["dev"]["history"]
    assert [h["step"] for h in hist] == [1, 2] and set(hist[0]["per_qp"]) == {"37"}
    assert hist[0]["per_qp"]["37"]["bpp"] > 0 and hist[0]["per_qp"]["37"]["kept"] == 8
    from codec.models.msff import file_sha256, load_msff

    assert rec["weights_sha256"] == file_sha256(out)
    model, _, _ = load_msff(out)
    assert model.cfg.fused_channels == 8
    assert train_msff.main([*args[:-4], "--steps", "3", "--resume", "--out", str(out)]) == 0
    rec2 = json.loads(out.with_suffix(".json").read_text())
    assert rec2["steps"] == 3 and [h["step"] for h in rec2["dev"]["history"]] == [1, 2, 3]
    assert len(rec2["calls"]) == 2
    ceil = tmp_path / "run" / "c.pt"
    assert train_msff.main([*args[:-4], "--steps", "1", "--ceiling", "--init", str(out), "--out", str(ceil)]) == 0
    rec3 = json.loads(ceil.with_suffix(".json").read_text())
    assert rec3["loss"]["ceiling"] and "map50" in rec3["dev"]["history"][0] and rec3["init"]["sha256"]


def test_vvc_round_trip_is_the_encoders_frame_per_sample():
    """train_msff --vvc-qps: each sample's kept channels coded as vvc_msff's encoder codes
    them (10-bit min-max quantisation, VVC, dequantisation), the rest zero; a higher QP
    costs fewer bits and loses more; the QP list is checked."""
    from codec.inner import vvc
    from tools import train_msff

    if not vvc.ffmpeg_supports_vvc():
        pytest.skip("ffmpeg without libvvenc / VVC decoder")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, 8, 8, generator=g).cumsum(-1)  # smooth along x, as fused features are
    kept = [6, 3]
    errs, bits = [], []
    for qp in (22, 47):
        z_hat, b = train_msff.vvc_round_trip(z, kept, qp, "faster")
        assert z_hat.shape == z.shape and b > 0
        assert torch.count_nonzero(z_hat[1, 3:]) == 0  # channels beyond the kept ones are zero
        errs.append(float((z_hat[0] - z[0]).pow(2).mean()))
        bits.append(b)
    span = float(z[0].max() - z[0].min())
    assert errs[0] < (span / 1023) ** 2 * 50 < errs[1]  # QP 22: near the 10-bit step; QP 47: far from it
    assert bits[1] < bits[0]
    assert train_msff.parse_qps("37, 42") == [37, 42]
    for bad in ("", "a", "37,99"):
        with pytest.raises(ValueError, match="--vvc-qps"):
            train_msff.parse_qps(bad)


def test_minute_log_averages_a_metric_over_the_steps_that_have_it(tmp_path):
    log = MinuteLog(tmp_path / "l.log", every_s=1e9)
    state = RunState()
    log.add(state, {"loss": 1.0}, 0.1)
    log.add(state, {"loss": 3.0, "vvc_bits": 10.0}, 0.1)
    log.every_s = 0.0
    log.add(state, {"loss": 5.0}, 0.1)
    line = (tmp_path / "l.log").read_text()
    assert "loss 3 " in line and "vvc_bits 10 " in line


def test_train_msff_with_vvc_in_the_loop(tmp_path, assets):
    """--vvc-qps trains through the real inner codec (2 steps) and records it; a bad list exits 2."""
    from codec.inner import vvc
    from tools import train_msff

    if not vvc.ffmpeg_supports_vvc():
        pytest.skip("ffmpeg without libvvenc / VVC decoder")
    images = train_image_folder(tmp_path, assets, 4)
    out = tmp_path / "run" / "m.pt"
    args = [
        "--images", str(images), "--cache-dir", str(tmp_path / "cache"), "--views", "1", "--holdout", "1",
        "--fused-channels", "8", "--width", "8", "--linear-path", "--pca-views", "3", "--batch", "2",
        "--dev", "none", "--steps", "2", "--vvc-qps", "32,42", "--out", str(out),
    ]  # fmt: skip
    assert train_msff.main(args) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["steps"] == 2 and rec["loss"]["vvc_qps"] == [32, 42] and rec["loss"]["vvc_every"] == 1
    assert train_msff.main([*args[:-4], "--vvc-qps", "99", "--out", str(out)]) == 2
    frozen = tmp_path / "run" / "f.pt"
    argv = [*args[:-2], "--steps", "1", "--freeze-msff", "--init", str(out), "--out", str(frozen)]
    assert train_msff.main(argv) == 0
    a_sd, b_sd = torch.load(out), torch.load(frozen)
    assert any(k.startswith("msff.") for k in a_sd)
    assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd if k.startswith("msff."))  # the encoder kept
    assert any(not torch.equal(a_sd[k], b_sd[k]) for k in a_sd if k.startswith("msfr."))  # the decoder trained
    assert json.loads(frozen.with_suffix(".json").read_text())["loss"]["freeze_msff"] is True
    assert train_msff.main([*args[:-2], "--freeze-msff", "--out", str(frozen)]) == 2  # needs --init


def test_dev_compare_reads_logs_and_records(tmp_path, capsys):
    from tools import dev_compare

    def entry(step, scale):
        pts = {str(i): {"bpp": 0.01 * 2**i * scale, "map50": 0.2 + 0.15 * i, "map": 0.1} for i in range(5)}
        return {"step": step, "train_minutes": 1.0, "figure": 0.5, "mean_map50": 0.5, "per_phi": pts}

    log = tmp_path / "a.log"
    log.write_text(
        "step 1 loss 1\n"
        + f"dev step 10: {json.dumps(entry(10, 1.0))}  (best)\n"
        + f"dev step 20: {json.dumps(entry(20, 2.0))}\n"
    )
    rec = tmp_path / "b.json"
    rec.write_text(json.dumps({"dev": {"best_step": 5, "history": [entry(5, 0.5), {"step": 6, "reset_best": True}]}}))
    assert dev_compare.main([str(log), f"{log}@20", str(rec)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"reference {log}@10")
    assert "BD-rate +100.0 %" in out[1] and "BD-rate -50.0 %" in out[2]  # twice and half the bits
    with pytest.raises(SystemExit, match="no dev evaluation at step 7"):
        dev_compare.main([str(log), f"{rec}@7"])


def test_a_coco_dev_set_measures_masks_only_for_a_network_with_masks_on_annotations_with_masks(tmp_path):
    from PIL import Image

    from codec.training import dev as tdev

    Image.new("RGB", (16, 12), (90, 120, 30)).save(tmp_path / "a.jpg")

    class Net:
        def __init__(self, tasks):
            self.tasks = tasks

        def preprocess(self, image):
            return torch.zeros(1, 3, 8, 8), None

        def part1(self, x, split):
            return {"p3": torch.ones(1, 2, 1, 1)}

    box = {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}
    for with_masks in (False, True):
        ann = dict(box, segmentation=[[1, 1, 5, 1, 5, 5]]) if with_masks else box
        path = tmp_path / f"ann{with_masks}.json"
        images = [{"id": 7, "file_name": "a.jpg", "width": 16, "height": 12}]
        path.write_text(json.dumps({"images": images, "annotations": [ann], "categories": [{"id": 1, "name": "x"}]}))
        for tasks in (("bbox",), ("bbox", "segm")):
            dev = tdev.coco_dev_set(Net(tasks), "neck", tmp_path, path)
            assert (len(dev), dev.images[0].pixels) == (1, 16 * 12)
            assert dev.masks == (with_masks and "segm" in tasks), (with_masks, tasks)
