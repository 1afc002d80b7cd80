"""Compile modes of the trainer: validation, the loss's compile-friendly form, and compiled training."""
import argparse
import json

import numpy as np
import pytest
import torch

from clipdetect.cli import train as cli_train
from clipdetect.models import losses
from clipdetect.models.heads import create_head
from clipdetect.models.step import compile_mode, forward_loss
from clipdetect.models.step import COMPILE_MODES
from clipdetect.models.sources import ArraySource
from clipdetect.models.train import TrainConfig, build_loss, train


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _balanced(n=64, dim=16, seed=0):
    """Exactly half fake, so every stratified batch has the same size (one compiled shape)."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2).astype(np.int64)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += 1.5 * (2 * y - 1)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


@pytest.mark.parametrize("bad", ["fast", "max-autotune", "", 1, "None"])
def test_bad_compile_value_names_the_choices(bad):
    with pytest.raises(ValueError, match="none, default, graphs") as err:
        TrainConfig(compile=bad)
    assert repr(bad) in str(err.value)
    x, y = _balanced(8)
    with pytest.raises(ValueError, match="none, default, graphs"):
        train(ArraySource(x, y), config=TrainConfig(batch_size=4, max_steps=1), compile=bad, progress=False)


def test_compile_mode_accepts_booleans_and_the_modes():
    assert COMPILE_MODES == ("none", "default", "graphs")
    assert [compile_mode(v) for v in (True, False, None, "none", "default", "graphs")] == [
        "default", "none", "none", "none", "default", "graphs"]
    assert TrainConfig(compile=True).compile == "default"
    assert TrainConfig.from_dict(TrainConfig(compile="graphs").to_dict()).compile == "graphs"


def test_cli_option_reaches_the_config():
    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "cache", "--out", "o", "--compile", "graphs"])
    assert cli_train.config_from_args(args).compile == "graphs"
    assert cli_train.config_from_args(parser.parse_args(["train", "c", "--out", "o"])).compile == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "c", "--out", "o", "--compile", "yes"])


@pytest.mark.parametrize("gamma, p, n_fake", [(0.1, 2.0, 7), (0.0, 1.0, 3), (0.5, 3.0, 12)])
def test_loss_form_used_under_compile_matches_eager(monkeypatch, gamma, p, n_fake):
    g = torch.Generator().manual_seed(n_fake)
    logits = torch.randn(20, generator=g, dtype=torch.float64) * 2
    targets = torch.zeros(20, dtype=torch.float64)
    targets[torch.randperm(20, generator=g)[:n_fake]] = 1
    loss_fn = losses.create_loss("cvar+auc", gamma=gamma, alpha=0.8, margin=0.6, p=p)

    def value_and_grad():
        x = logits.clone().requires_grad_(True)
        value = loss_fn(x, targets)
        value.backward()
        return value.detach(), x.grad

    eager = value_and_grad()
    monkeypatch.setattr(losses, "_compiling", lambda: True)
    masked = value_and_grad()
    assert torch.allclose(masked[0], eager[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(masked[1], eager[1], rtol=1e-10, atol=1e-12)
    # independent reference for the AUC term: the mean over every (fake, real) pair
    fake, real = logits[targets == 1], logits[targets == 0]
    ref = torch.stack([torch.clamp(0.6 - (f - r), min=0) ** p for f in fake for r in real]).mean()
    assert torch.allclose(losses.pairwise_auc_loss(logits, targets == 1, margin=0.6, p=p), ref)


def test_head_and_loss_trace_as_one_graph():
    x, y = _balanced(32)
    cfg = TrainConfig(dropout=0.0, width=8)
    head = create_head(cfg.head_config(16)).train()
    explained = torch._dynamo.explain(forward_loss(head, build_loss(cfg)))(
        torch.from_numpy(x), torch.from_numpy(y).float())
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """Inductor compiles a few graphs on the CPU here (tens of seconds on a cold cache)."""
    x, y = _balanced()
    cfg = TrainConfig(batch_size=32, epochs=2, lr=1e-2, depth=1, width=8, dropout=0.0, patience=0)
    eager = train(ArraySource(x, y), config=cfg, progress=False)
    compiled = train(ArraySource(x, y), config=cfg, progress=False, compile="default", out_dir=tmp_path)
    assert compiled.steps == eager.steps == 4
    ref, got = eager.head.state_dict(), compiled.head.state_dict()
    assert ref.keys() == got.keys()
    # a Linear bias right before BatchNorm has a zero gradient up to rounding, and AdamW scales that
    # rounding noise up to lr-sized steps: such biases, and the running means that see them, differ
    # between any two orders of the same sums; every other weight must agree
    body = list(eager.head.body)
    noisy = {k for i, m in enumerate(body[:-1])
             if isinstance(m, torch.nn.Linear) and isinstance(body[i + 1], torch.nn.BatchNorm1d)
             for k in (f"body.{i}.bias", f"body.{i + 1}.running_mean")}
    assert len(noisy) == 2 * cfg.depth
    for k in ref.keys() - noisy:
        assert torch.allclose(got[k].double(), ref[k].double(), atol=1e-4), k
    assert not torch.allclose(ref["out.weight"], create_head(cfg.head_config(16)).state_dict()["out.weight"])
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], abs=1e-5)
    assert json.loads((tmp_path / "train_config.json").read_text())["compile"] == "default"
