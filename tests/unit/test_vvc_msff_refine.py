"""vvc_msff's encoder-side refinement (``--refine N``): the fused tensor moved against the
MSFR's training distortion through the real VVC round trip; the stream and the decoder are
unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.errors import EncodeError
from codec.modes import anchor, vvc_msff
from codec.vision.base import ScaleInfo, SplitPoint

REPO = Path(__file__).resolve().parents[2]
NECK = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 128, 32)))


def test_quantiser_step_doubles_every_six_qps():
    assert vvc_msff.quantiser_step(4) == 1.0
    assert vvc_msff.quantiser_step(40) == pytest.approx(2 * vvc_msff.quantiser_step(34))


@pytest.mark.needs_ffmpeg
def test_refine_fused_keeps_the_step_of_lowest_decoded_distortion():
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(4, 12, 12)).astype(np.float32)
    target = torch.from_numpy(np.roll(z0, 1, axis=2).copy())  # a target the analysis does not give
    lo, hi = float(z0.min()), float(z0.max())

    def decoder(codes):
        return codes[0] * np.float32((hi - lo) / anchor.MAX_CODE) + np.float32(lo)

    def distortion(rec):
        return ((rec - target) ** 2).mean()

    codes, qlo, qhi, stream, history = vvc_msff.refine_fused(z0, 37, "faster", decoder, distortion, 6, 0.3)
    q0, lo0, hi0 = anchor.quantise(z0)
    assert (qlo, qhi) == (lo0, hi0)  # the header's range is the analysis'
    assert len(history) == 7
    assert history[-1][1] < history[0][1]  # the steps lower the decoded distortion
    best = min(range(7), key=lambda i: history[i][1])
    assert 8 * len(stream) == history[best][0]
    # the stream is what the decoder reads: its decoded codes give the kept step's distortion
    layout = anchor.frame_layout([codes.shape])
    from codec.inner import vvc

    dec = anchor.untile(vvc.decode_luma10(stream, layout.width, layout.height), [codes.shape], layout)[0]
    d = float(distortion(decoder(torch.from_numpy(dec.astype(np.float32)).unsqueeze(0))))
    assert d == pytest.approx(history[best][1], rel=1e-5)
    assert not np.array_equal(codes, q0)
    again = vvc_msff.refine_fused(z0, 37, "faster", decoder, distortion, 6, 0.3)
    assert again[3] == stream  # deterministic: the same tensor, the same stream
    # with a rate weight, the kept step is the one of the lowest log(distortion) + w log(bits)
    codes, _, _, stream, history = vvc_msff.refine_fused(z0, 37, "faster", decoder, distortion, 6, 0.3, 1.5)
    figures = [math.log(d) + 1.5 * math.log(b) for b, d in history]
    assert 8 * len(stream) == history[int(np.argmin(figures))][0]
    assert history != again[4]  # the rate term changes the steps


def test_rate_proxy_counts_tile_edges_not_levels():
    flat = torch.full((1, 2, 8, 8), 500.0, requires_grad=True)
    assert float(vvc_msff.rate_proxy(flat.detach(), 37)) == 1.0  # a flat tile costs nothing but the floor
    rough = flat.detach().clone()
    rough[0, 0, ::2] += 200
    assert float(vvc_msff.rate_proxy(rough, 37)) > float(vvc_msff.rate_proxy(rough, 42)) > 1.0
    vvc_msff.rate_proxy(flat + torch.randn(1, 2, 8, 8), 37).backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


@pytest.mark.needs_ffmpeg
@pytest.mark.needs_assets
def test_refine_option_codes_a_stream_the_decoder_reads_and_refuses_what_it_cannot_do():
    sample = sorted((REPO / "samples").glob("*.jpg"))
    if not sample:
        pytest.skip("no sample image in samples/")
    from codec import pipeline
    from codec.bitstream import CodecModelId
    from codec.models.registry import entry, verified_record
    from codec.vision import get_network

    net = get_network("nanodet")
    image = pipeline.load_image(sample[0])
    model, _, _ = vvc_msff.model_for(CodecModelId.MSFF_NANODET_NECK_G2)
    flags = [p.requires_grad for p in model.parameters()]
    plain = pipeline.encode_image(image, net, None, "vvc_msff", {"qp": 42})
    refined = pipeline.encode_image(image, net, None, "vvc_msff", {"qp": 42, "refine": 3})
    assert refined.bitstream != plain.bitstream
    dec = pipeline.decode_bitstream(refined.bitstream, net)
    assert {k: tuple(v.shape) for k, v in dec.features.items()} == {
        k: tuple(v.shape) for k, v in plain.features.items()
    }
    # the same image gives the same stream; the default step size is REFINE_LR
    default_lr = {"qp": 42, "refine": 3, "refine_lr": vvc_msff.REFINE_LR}
    assert pipeline.encode_image(image, net, None, "vvc_msff", default_lr).bitstream == refined.bitstream
    params = vvc_msff.MODE.make_params({"qp": 42, "refine": 3})
    with pytest.raises(EncodeError, match="needs the network"):
        vvc_msff.encode(plain.features, NECK, params)
    from types import SimpleNamespace

    onnx_context = SimpleNamespace(network=SimpleNamespace(engine="onnx", name="nanodet"), split="neck")
    with pytest.raises(EncodeError, match="PyTorch network"):
        vvc_msff.encode(plain.features, NECK, params, onnx_context)
    with pytest.raises(EncodeError, match="must be"):
        vvc_msff.MODE.make_params({"refine": 0})
    for bad, match in (({"refine_lr": 0.05}, "needs --refine"), ({"refine": 3, "refine_lr": 0.0}, "must be in"),
                       ({"refine_rate_weight": 0.5}, "needs --refine"),
                       ({"refine": 3, "refine_rate_weight": -1.0}, "must be in"),
                       ({"refine": 3, "refine_rate_weight": float("nan")}, "must be in"),
                       ({"refine": 3, "refine_lr": float("nan")}, "must be in"),
                       ({"refine": 3, "refine_lr": 2.0}, "must be in")):  # fmt: skip
        with pytest.raises(EncodeError, match=match):
            vvc_msff.encode(plain.features, NECK, vvc_msff.MODE.make_params({"qp": 42, **bad}))
    assert vvc_msff.model_for(CodecModelId.MSFF_NANODET_NECK_G2)[0] is model  # one cached model, shared
    assert [p.requires_grad for p in model.parameters()] == flags  # and left as it was
    assert all(p.grad is None for p in model.parameters())
    seg_record = verified_record(entry(CodecModelId.FENET_YOLOV5S_SEG_NECK).weights)
    with pytest.raises(EncodeError, match="trained on yolov5s_seg/neck"):
        vvc_msff.refinement_distortion(seg_record, net, "neck", model)
    with pytest.raises(EncodeError, match="training record"):
        vvc_msff.refinement_distortion({"weights_sha256": "0" * 64}, net, "neck", model)
