"""Training rows held on the device (the GPU path; here on the CPU) train exactly as streamed rows."""
import numpy as np
import torch

from clipdetect.models.resident import DeviceRows, fits
from clipdetect.models.samplers import StratifiedBatchSampler
from clipdetect.models.sources import ArraySource
from clipdetect.models.train import TrainConfig, train


def test_resident_rows_give_the_same_weights_as_streamed_rows():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float16)
    y = (rng.random(300) < 0.3).astype(int)
    cfg = TrainConfig(batch_size=32, epochs=2, max_steps=15, seed=5, patience=0)
    streamed = train(ArraySource(X, y), config=cfg, progress=False, resident=False)
    held = train(ArraySource(X, y), config=cfg, progress=False, resident=True)
    assert streamed.steps == held.steps == 15
    for a, b in zip(streamed.head.state_dict().values(), held.head.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in streamed.history] == [h["train_loss"] for h in held.history]


def test_device_rows_gather_the_sampler_batches():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 4)).astype(np.float16)
    y = (rng.random(100) < 0.5).astype(int)
    rows = DeviceRows(ArraySource(X, y), torch.device("cpu"), chunk=30)
    assert rows.X.dtype == torch.float16 and not fits(ArraySource(X, y), torch.device("cpu"))
    sampler = StratifiedBatchSampler(y, 16, seed=2)
    got = list(rows.batches(sampler, 1))
    want = list(sampler.epoch(1))
    assert len(got) == len(want) == len(sampler)
    for (xb, yb), idx in zip(got, want):
        assert xb.dtype == torch.float32 and np.array_equal(xb.numpy(), X[idx].astype(np.float32))
        assert np.array_equal(yb.numpy(), y[idx])
    assert len(list(rows.batches(sampler, 1, limit=2))) == 2 and list(rows.batches(sampler, 1, limit=0)) == []
