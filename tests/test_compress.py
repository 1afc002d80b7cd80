"""SVD factorisation, magnitude pruning and the compress report."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from clipdetect.models.compress import (LowRankConv1x1, LowRankLinear, apply_structure, choose_rank, magnitude_prune,
                                 prunable_weights, svd_factorize)
from clipdetect.distill.compress_report import CompressConfig, compress
from clipdetect.models.detector import load_detector
from clipdetect.models.detector import Detector
from clipdetect.models.heads import HeadConfig, create_head


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(in_dim=24, seed=0):
    torch.manual_seed(seed)
    return create_head(HeadConfig(kind="mlp", in_dim=in_dim, depth=2)).eval()


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_svd_at_full_rank_reproduces_outputs():
    head = mlp()
    x = torch.randn(32, 24)
    ref = head(x)
    fact = copy.deepcopy(head)
    ranks = svd_factorize(fact, rank=10_000, only_if_smaller=False)
    assert set(ranks) == {"body.0", "body.4", "out"} and ranks["out"] == 1
    assert isinstance(fact.body[0], LowRankLinear)
    assert torch.allclose(fact(x), ref, atol=1e-5)


def test_svd_at_low_rank_reduces_parameters_with_the_optimal_error():
    head = mlp(in_dim=64)
    w = head.body[0].weight.detach()
    s = torch.linalg.svdvals(w.double())
    sizes = []
    for r in (4, 16, 31):
        fact = copy.deepcopy(head)
        done = svd_factorize(fact, rank=r)
        assert done["body.0"] == r and "out" not in done  # a 64->1 layer cannot get smaller
        sizes.append(n_params(fact))
        approx = (fact.body[0].second.weight @ fact.body[0].first.weight).double()
        # Eckart-Young: the truncation error is the energy of the dropped singular values
        err = float(torch.linalg.norm(w.double() - approx.detach()))
        assert err == pytest.approx(float(s[r:].norm()), rel=1e-4)
    assert sizes[0] < sizes[1] < sizes[2] < n_params(head)
    # rank 32 of a 64x64 matrix saves nothing: the layer is left alone
    assert svd_factorize(copy.deepcopy(head), rank=32) == {}


def test_energy_rank_and_structure_replay():
    s = torch.tensor([3.0, 2.0, 1.0, 0.1])
    assert [choose_rank(s, energy=e) for e in (0.5, 0.95, 1.0)] == [1, 3, 4]
    head = mlp(in_dim=64)
    fact = copy.deepcopy(head)
    structure = {"svd": svd_factorize(fact, energy=0.6)}
    rebuilt = apply_structure(mlp(in_dim=64, seed=1), structure)
    rebuilt.load_state_dict(fact.state_dict(), strict=True)
    x = torch.randn(8, 64)
    assert torch.equal(rebuilt.eval()(x), fact(x))


def test_pointwise_convolutions_factorise_exactly_at_full_rank():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 1, stride=2), nn.ReLU()).eval()
    x = torch.randn(2, 3, 9, 9)
    ref = net(x)
    ranks = svd_factorize(net, rank=8, only_if_smaller=False)
    assert list(ranks) == ["1"] and isinstance(net[1], LowRankConv1x1)  # the 3x3 conv is not touched
    assert torch.allclose(net(x), ref, atol=1e-5)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_zeroes_the_requested_fraction_of_smallest_weights(scope):
    head = mlp(in_dim=32)
    before = {n: w.detach().clone() for n, w in prunable_weights(head)}
    biases = [m.bias.detach().clone() for m in head.modules() if isinstance(m, nn.Linear)]
    stats = magnitude_prune(head, 0.5, scope=scope)
    total = sum(w.numel() for w in before.values())
    assert stats["achieved"] == pytest.approx(0.5, abs=1.0 / total + 1e-9)
    after = dict(prunable_weights(head))
    if scope == "layer":
        for n, w in after.items():
            assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1.0 / w.numel() + 1e-9)
    pruned = torch.cat([before[n][after[n] == 0].abs() for n in before])
    kept = torch.cat([before[n][after[n] != 0].abs() for n in before])
    if scope == "global":
        assert pruned.max() <= kept.min()
    for b, m in zip(biases, [m for m in head.modules() if isinstance(m, nn.Linear)]):
        assert torch.equal(b, m.bias)
    with pytest.raises(ValueError, match="prune amount"):
        magnitude_prune(head, 1.0)


def test_compress_detector_report_and_bundle(tmp_path):
    from helpers.synthetic import synthetic_identity, write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "cache", n=120, dim=32, shards=1, text=False)
    x = cache.features("image")
    config = HeadConfig(kind="mlp", in_dim=32, depth=2)
    det = Detector(head=mlp(in_dim=32), head_config=config, feature_set="image",
                   backbone=synthetic_identity(32))
    det.save(tmp_path / "det")
    report = compress(CompressConfig(target=str(tmp_path / "det"), out=str(tmp_path / "small"), svd_rank=4,
                                     prune=0.3, eval_cache=str(tmp_path / "cache"), timing_seconds=0.01))
    for side in ("before", "after"):
        keys = ("parameters", "nonzero_parameters", "file_bytes", "deflated_bytes", "rows_per_second", "auc")
        assert set(keys) <= set(report[side]), side
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["nonzero_parameters"] < report["after"]["parameters"]
    assert report["after"]["file_bytes"] < report["before"]["file_bytes"]
    md = (tmp_path / "small" / "compress_report.md").read_text()
    assert "| parameters |" in md and "dense with zeros" in md
    assert json.loads((tmp_path / "small" / "compress_report.json").read_text())["kind"] == "detector"
    small = load_detector(tmp_path / "small")
    assert small.extra["compression"]["svd"] and small.probability(x).shape == (120,)


def test_compress_student_report(tmp_path):
    from test_distill import make_material, tiny_config

    from clipdetect.features.backbones import create_backbone
    from clipdetect.distill.trainer import distill

    imgs, cache = make_material(tmp_path)
    distill(tiny_config(tmp_path, imgs, cache, epochs=1), progress=False)
    report = compress(CompressConfig(target=str(tmp_path / "student"), out=str(tmp_path / "pruned"),
                                     prune=0.5, svd_rank=2, eval_source=str(imgs), timing_seconds=0.01))
    b, a = report["before"], report["after"]
    assert {"parameters", "file_bytes", "images_per_second", "auc", "eval_images"} <= set(a)
    assert a["eval_images"] == b["eval_images"] > 0
    assert a["nonzero_parameters"] < 0.6 * b["nonzero_parameters"]
    bb = create_backbone(f"student:{tmp_path / 'pruned'}")  # the compressed student is a backbone too
    assert bb.identity["compression"]["svd"] and bb.encode_images(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    det = load_detector(tmp_path / "pruned" / "detector")
    assert det.backbone["sha256"] == bb.identity["sha256"]
    with pytest.raises(ValueError, match="nothing to do"):
        CompressConfig(target="x", out="y")
    assert np.isfinite(a["images_per_second"])


def test_plain_detector_load_opens_svd_compressed_heads(tmp_path):
    from helpers.synthetic import synthetic_identity, write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "cache", n=60, dim=32, shards=1, text=False)
    x = cache.features("image")
    det = Detector(head=mlp(in_dim=32), head_config=HeadConfig(kind="mlp", in_dim=32, depth=2),
                   feature_set="image", backbone=synthetic_identity(32))
    det.save(tmp_path / "det")
    compress(CompressConfig(target=str(tmp_path / "det"), out=str(tmp_path / "small"), svd_rank=4,
                            eval_cache=str(tmp_path / "cache"), timing_seconds=0.01))
    small = Detector.load(tmp_path / "small")  # what `clipdetect predict/evaluate` use
    assert np.allclose(small.probability(x), load_detector(tmp_path / "small").probability(x))
