import dataclasses
import json

import pytest

import torch
from torch import nn

from clipdetect.models.heads import (
    HeadConfig,
    LinearHead,
    MLPHead,
    count_parameters,
    create_head,
    head_from_dict,
    kaiming_bound,
)


def test_mlp_output_shape_and_structure():
    head = create_head(HeadConfig(in_dim=16, width=8, depth=2))
    assert isinstance(head, MLPHead)
    out = head(torch.randn(5, 16))
    assert out.shape == (5,)
    kinds = [type(m) for m in head.body]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Dropout] * 2
    assert head.body[2].negative_slope == pytest.approx(0.01)
    assert head.body[3].p == pytest.approx(0.335)
    assert head.out.in_features == 8 and head.out.out_features == 1


def test_parameter_count_default_1536():
    d = 1536
    head = create_head(HeadConfig(in_dim=d))
    expected = 3 * (d * d + d + 2 * d) + d + 1
    assert count_parameters(head) == expected


def test_width_defaults_to_in_dim():
    head = create_head(HeadConfig(in_dim=12, depth=1))
    assert head.body[0].out_features == 12


def test_kaiming_uniform_init():
    torch.manual_seed(0)
    fan_in = 256
    head = MLPHead(fan_in, width=256, depth=2)
    bound = kaiming_bound(fan_in, 0.01)
    for lin in [head.body[0], head.body[4], head.out]:
        w = lin.weight.detach()
        assert float(w.abs().max()) <= bound
        # a uniform(-b, b) sample of 65k values reaches close to the bound and has var b^2/3
        if w.numel() > 1000:
            assert float(w.abs().max()) > 0.98 * bound
            assert float(w.var()) == pytest.approx(bound**2 / 3, rel=0.05)
        assert torch.count_nonzero(lin.bias) == 0
    # the output layer has fan_in 256 too and 256 weights: only the bound is checked
    assert head.out.weight.shape == (1, fan_in)


def test_linear_head():
    head = create_head(HeadConfig(kind="linear", in_dim=7))
    assert isinstance(head, LinearHead)
    assert count_parameters(head) == 8
    x = torch.randn(3, 7)
    expected = x @ head.linear.weight.T.squeeze(-1) + head.linear.bias
    assert torch.allclose(head(x), expected)


def test_config_round_trip_through_json():
    cfg = HeadConfig(kind="mlp", in_dim=32, width=16, depth=2, dropout=0.1)
    again = head_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(kind="transformer"), "transformer"),
        (dict(depth=0), "depth"),
        (dict(dropout=1.0), "1.0"),
        (dict(dropout=-0.1), "-0.1"),
        (dict(width=0), "width"),
    ],
)
def test_bad_config_raises(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        HeadConfig(in_dim=8, **kwargs)


def test_head_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hidden"):
        head_from_dict({"in_dim": 8, "hidden": 4})


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    head = create_head(HeadConfig(in_dim=16, width=8))
    x = torch.randn(10, 16)
    head.train()
    head(x)  # populate running stats
    head.eval()
    with torch.no_grad():
        a, b = head(x), head(x)
        single = head(x[:1])
    assert torch.equal(a, b)
    assert torch.allclose(single, a[:1], atol=1e-6)
    head.train()
    assert not torch.equal(head(x), head(x))  # dropout active in training


def test_layer_head_shapes_weights_and_config_errors():
    cfg = HeadConfig(kind="layers", in_dim=4 * 8, tokens=4, width=16, depth=1)
    head = create_head(cfg)
    assert head(torch.randn(5, 32)).shape == (5,)
    w = head.block_weights()
    assert w.shape == (4, 16) and torch.allclose(w.sum(0), torch.ones(16)) and torch.allclose(w, w[0])
    assert HeadConfig(kind="layers", in_dim=32, tokens=4).hidden_width == 8  # the token width
    with pytest.raises(ValueError, match="tokens"):
        HeadConfig(kind="layers", in_dim=30, tokens=4)
    assert head_from_dict(dataclasses.asdict(cfg)) == cfg
