import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from clipdetect.core.metrics import binary_metrics
from clipdetect.models.samplers import StratifiedBatchSampler
from clipdetect.models.sources import ArraySource, CacheSource, predict_logits
from clipdetect.models.train import train

from helpers.synthetic import separable_features, write_synthetic_cache
from helpers.training import FAST, interrupt_on_call

SIX = replace(FAST, epochs=6)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("n_fake", [1, 7, 150])
def test_sampler_every_batch_has_both_classes_and_keeps_ratio(n_fake):
    y = np.r_[np.ones(n_fake, int), np.zeros(300, int)]
    sampler = StratifiedBatchSampler(y, 32, seed=1)
    seen = []
    for epoch in (1, 2):
        for idx in sampler.epoch(epoch):
            assert 0 < y[idx].sum() < len(idx)
            assert np.all(np.diff(idx) >= 0)
            assert len(idx) <= 32 + 1
            seen.append(idx)
    assert len(seen) == 2 * len(sampler) == 2 * int(np.ceil((300 + n_fake) / 32))
    one_epoch = np.concatenate(seen[:len(sampler)])
    assert set(one_epoch) == set(range(len(y)))  # every row once (the minority cycled when too small)
    if n_fake >= len(sampler):
        assert len(one_epoch) == len(y)
        ratio = [y[i].mean() for i in seen]
        assert max(ratio) - min(ratio) < 0.1


def test_sampler_refuses_one_class():
    with pytest.raises(ValueError, match="both classes"):
        StratifiedBatchSampler(np.zeros(10, int), 4)


def test_train_separable_reaches_high_auc_and_logs(tmp_path):
    X, y = separable_features(800, 16, shift=3.0, seed=0)
    Xv, yv = separable_features(300, 16, shift=3.0, seed=1)
    r = train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=SIX, out_dir=tmp_path,
              progress=False)
    Xt, yt = separable_features(300, 16, shift=3.0, seed=2)
    assert binary_metrics(yt, predict_logits(r.head, ArraySource(Xt, yt)), scores_are_probs=False)["auc"] > 0.95
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == list(range(1, 7))
    assert {"train_loss", "val_auc", "val_ap", "val_acc", "lr", "seconds"} <= set(log[0])
    assert log[-1]["lr"] < log[0]["lr"]  # cosine decay
    assert json.loads((tmp_path / "train_config.json").read_text())["loss"] == "cvar+auc"


def test_same_seed_same_weights_other_seed_differs():
    X, y = separable_features(300, 16, seed=0)
    cfg = replace(FAST, epochs=2)
    a, b = (train(ArraySource(X, y), config=cfg, progress=False).head.state_dict() for _ in range(2))
    c = train(ArraySource(X, y), config=replace(FAST, epochs=2, seed=1), progress=False).head
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["out.weight"], c.state_dict()["out.weight"])


def test_early_stopping_keeps_best_epoch():
    # labels of the validation set are the reverse of the training signal: val AUC falls as training
    # proceeds, so the best epoch is the first and training stops after `patience` worse epochs
    X, y = separable_features(400, 16, shift=3.0, seed=0)
    Xv, yv = separable_features(200, 16, shift=3.0, seed=1)
    cfg = replace(FAST, epochs=20, patience=3)
    r = train(ArraySource(X, y), val_data=ArraySource(Xv, 1 - yv), config=cfg, progress=False)
    aucs = [h["val_auc"] for h in r.history]
    assert r.stopped_early and r.epochs_run == r.best_epoch + 3 < 20
    assert r.best_epoch == int(np.argmax(aucs)) + 1
    best_auc = binary_metrics(1 - yv, predict_logits(r.head, ArraySource(Xv, yv)), scores_are_probs=False)["auc"]
    assert best_auc == pytest.approx(max(aucs))
    assert np.allclose(r.val_logits, predict_logits(r.head, ArraySource(Xv, yv)), atol=1e-6)


def test_a_saturated_validation_auc_is_broken_by_the_loss():
    # an easy, tiny validation set reaches AUC 1 at once: the kept epoch is not the first one,
    # but the one with the lowest validation loss among those at AUC 1
    X, y = separable_features(200, 16, shift=3.0, seed=0)
    Xv, yv = separable_features(12, 16, shift=6.0, seed=1)
    cfg = replace(FAST, epochs=12, patience=3)
    r = train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False)
    assert all(h["val_auc"] == 1.0 for h in r.history)
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == int(np.argmin(losses)) + 1 > 1


def test_sam_second_pass_leaves_batchnorm_stats_to_the_first():
    X, y = separable_features(64, 16, seed=0)
    cfgs = [replace(FAST, epochs=1, batch_size=64, sam=s, dropout=0.0) for s in (True, False)]
    heads = [train(ArraySource(X, y), config=c, progress=False).head for c in cfgs]
    # one step from the same init, same batch: running stats are those of one forward pass at w in both
    for name in ("body.1.running_mean", "body.1.running_var", "body.1.num_batches_tracked"):
        assert torch.allclose(heads[0].state_dict()[name], heads[1].state_dict()[name])


@pytest.mark.parametrize("feature_set,dim", [("image", 16), ("text", 16), ("image+text", 32)])
def test_train_from_cache_feature_sets(tmp_path, feature_set, dim):
    cache = write_synthetic_cache(tmp_path / "c", n=240, shift=3.0)
    rows = np.arange(0, 240, 2)
    src = CacheSource(cache, rows, feature_set)
    assert src.dim == dim and np.array_equal(src.y, cache.labels(rows))
    assert np.allclose(src.batch(np.array([0, 5])), cache.features(feature_set, rows[[0, 5]]))
    r = train(src, config=replace(FAST, epochs=4), progress=False)
    assert binary_metrics(src.y, predict_logits(r.head, src), scores_are_probs=False)["auc"] > 0.9


def test_layers_head_reads_per_block_tokens(tmp_path):
    from helpers.synthetic import write_layered_cache
    from clipdetect.models.detector import Detector

    cache = write_layered_cache(tmp_path / "c", n=240)
    config = replace(FAST, batch_size=32, epochs=20, dropout=0.0)
    det = Detector.fit_cache(cache, feature_set="layers", config=config)
    assert det.head_config.kind == "layers" and det.head_config.tokens == 4
    test = cache.select()  # every row: the signal sits in block 2 only
    auc = binary_metrics(cache.labels(test), det.logits(det.features(cache, test)),
                         scores_are_probs=False)["auc"]
    assert auc > 0.95
    weights = det.head.block_weights().detach().mean(dim=1)
    assert int(weights.argmax()) == 1  # the learned importance found the informative block


def test_group_sampler_keeps_groups_whole_and_views_filter_rows(tmp_path):
    from helpers.synthetic import write_layered_cache
    from clipdetect.features.splits import SplitSpec, view_rows
    from clipdetect.models.samplers import GroupBatchSampler

    cache = write_layered_cache(tmp_path / "c", n=120, views=("orig", "aug"), group_size=3)
    groups = cache.columns("group")["group"].to_numpy()
    y = cache.labels()
    codes = np.unique(groups, return_inverse=True)[1]
    sampler = GroupBatchSampler(y, codes, 32, seed=0)
    seen = []
    for batch in sampler.epoch(0):
        assert 0 < y[batch].sum() < len(batch)
        for g in np.unique(codes[batch]):
            assert set(np.flatnonzero(codes == g)) <= set(batch.tolist())  # the whole group is there
        seen += batch.tolist()
    assert sorted(seen) == list(range(len(y)))
    tr, va, te = SplitSpec().all(cache)
    # a content group (and every view of an image) lands in one split
    assert not (set(groups[tr]) & set(groups[te])) and not (set(groups[tr]) & set(groups[va]))
    only = view_rows(cache, tr, ["orig"])
    assert len(only) * 2 == len(tr) and set(cache.columns("view")["view"].to_numpy()[only]) == {"orig"}
    with pytest.raises(ValueError, match="not in cache"):
        view_rows(cache, tr, ["jpeg:50"])
    from clipdetect.models.detector import Detector

    det = Detector.fit_cache(cache, feature_set="layers", config=replace(SIX, auc_pairs="group",
                                                                            views=["orig"]))
    assert det.train_config["auc_pairs"] == "group" and det.train_config["views"] == ["orig"]


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import clipdetect.models.train as train_mod

    X, y = separable_features(300, 16, seed=0)
    Xv, yv = separable_features(100, 16, seed=1)
    cfg = replace(FAST, epochs=4, patience=0)
    straight = train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False)
    real = train_mod.predict_logits
    monkeypatch.setattr(train_mod, "predict_logits", interrupt_on_call(real, 3))  # in the third epoch
    with pytest.raises(KeyboardInterrupt):
        train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False, checkpoints=tmp_path)
    monkeypatch.setattr(train_mod, "predict_logits", real)
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 2
    with pytest.raises(ValueError, match="other settings"):
        train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=replace(FAST, epochs=5),
              progress=False, checkpoints=tmp_path, resume=True)
    resumed = train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False,
                    checkpoints=tmp_path, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4] and resumed.best_epoch == straight.best_epoch
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    a, b = straight.head.state_dict(), resumed.head.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(resumed.val_logits, straight.val_logits)


def test_source_balanced_sampler_gives_every_source_its_share_and_keeps_the_classes():
    from clipdetect.models.samplers import SourceBalancedBatchSampler

    # fakes: 900 from a big generator, 100 from a small one; reals: 400 + 100
    y = np.r_[np.ones(1000, int), np.zeros(500, int)]
    src = np.r_[["big"] * 900, ["small"] * 100, ["photos"] * 400, ["faces"] * 100]
    drawn = {}
    for power in (0.0, 0.5, 1.0):
        sampler = SourceBalancedBatchSampler(y, src, 64, power=power, seed=3)
        batches = list(sampler.epoch(0))
        assert len(batches) == len(sampler) == int(np.ceil(1500 / 64))
        idx = np.concatenate(batches)
        assert (y[idx] == 1).sum() == 1000 and (y[idx] == 0).sum() == 500  # each class drawn as often as it has rows
        assert all(0 < y[b].sum() < len(b) and np.all(np.diff(b) >= 0) for b in batches)
        drawn[power] = ((src[idx] == "small").sum() / 1000, (src[idx] == "faces").sum() / 500)
        again = np.concatenate(list(SourceBalancedBatchSampler(y, src, 64, power=power, seed=3).epoch(0)))
        assert np.array_equal(idx, again)  # deterministic per seed and epoch
    assert drawn[0.0][0] == pytest.approx(0.10, abs=0.03) and drawn[0.0][1] == pytest.approx(0.20, abs=0.05)
    assert drawn[0.5][0] == pytest.approx(0.25, abs=0.04)  # sqrt(100) / (sqrt(900) + sqrt(100))
    assert drawn[1.0][0] == pytest.approx(0.5, abs=0.05) and drawn[1.0][1] == pytest.approx(0.5, abs=0.06)


def test_balance_trains_on_a_cache_and_is_refused_where_it_cannot_apply(tmp_path):
    from helpers.synthetic import write_layered_cache
    from clipdetect.models.detector import Detector
    from clipdetect.models.train import TrainConfig

    with pytest.raises(ValueError, match="balance 'sizes' is not one of"):
        TrainConfig(balance="sizes")
    X, y = separable_features(80, 8, seed=0)
    with pytest.raises(ValueError, match="needs the rows' sources"):
        train(ArraySource(X, y), config=replace(FAST, balance="source"), progress=False)
    cache = write_layered_cache(tmp_path / "c", n=120, sources=3, group_size=3)
    with pytest.raises(ValueError, match="do not combine"):
        Detector.fit_cache(cache, config=replace(SIX, balance="source", auc_pairs="group"))
    det = Detector.fit_cache(cache, config=replace(SIX, balance="source"))
    plain = Detector.fit_cache(cache, config=SIX)
    assert det.train_config["balance"] == "source" and plain.train_config["balance"] == "none"
    X = cache.features("image", np.arange(40))
    assert not np.allclose(det.logits(X), plain.logits(X))  # the batches were drawn another way


def test_jitter_adds_noise_of_the_given_spread_to_about_half_the_rows():
    from clipdetect.models.train import jitter

    torch.manual_seed(0)
    x = torch.zeros(4000, 3)
    out = jitter(x, torch.tensor([0.0, 1.0, 5.0]))
    hit = out.abs().sum(1) > 0
    assert 0.45 < hit.float().mean() < 0.55  # a random half of the rows
    assert torch.equal(out[:, 0], x[:, 0])  # a feature of zero spread is left alone
    np.testing.assert_allclose(out[hit].std(0)[1:].numpy(), [1.0, 5.0], rtol=0.06)
    assert torch.equal(out[~hit], x[~hit])


def test_feature_spread_is_the_per_feature_std_of_the_rows_or_of_a_seeded_sample():
    from clipdetect.models.sources import feature_spread

    X = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32) * np.array([1, 2, 3, 4], np.float32)
    src = ArraySource(X, np.arange(500) % 2)
    np.testing.assert_allclose(feature_spread(src), X.std(0), rtol=1e-5)
    sub = feature_spread(src, n=200, seed=3)
    np.testing.assert_array_equal(sub, feature_spread(src, n=200, seed=3))
    np.testing.assert_allclose(sub, [1, 2, 3, 4], rtol=0.2)


def test_feature_noise_trains_reproducibly_resumes_and_is_validated(tmp_path, monkeypatch):
    import clipdetect.models.train as train_mod

    X, y = separable_features(300, 16, seed=0)
    Xv, yv = separable_features(100, 16, seed=1)
    cfg = replace(FAST, epochs=3, patience=0, feature_noise=0.5)
    a, b = (train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False) for _ in range(2))
    plain = train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=replace(cfg, feature_noise=0.0),
                  progress=False)
    assert all(torch.equal(a.head.state_dict()[k], b.head.state_dict()[k]) for k in a.head.state_dict())
    assert not torch.equal(a.head.state_dict()["out.weight"], plain.head.state_dict()["out.weight"])
    real = train_mod.predict_logits
    monkeypatch.setattr(train_mod, "predict_logits", interrupt_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False, checkpoints=tmp_path)
    monkeypatch.setattr(train_mod, "predict_logits", real)
    resumed = train(ArraySource(X, y), val_data=ArraySource(Xv, yv), config=cfg, progress=False,
                    checkpoints=tmp_path, resume=True)
    assert all(torch.equal(a.head.state_dict()[k], resumed.head.state_dict()[k]) for k in a.head.state_dict())
    with pytest.raises(ValueError, match="feature_noise must be >= 0"):
        replace(FAST, feature_noise=-0.1)


def test_feature_noise_trains_a_per_block_head(tmp_path):
    from helpers.synthetic import write_layered_cache
    from clipdetect.models.detector import Detector

    cache = write_layered_cache(tmp_path / "c", n=240)
    det = Detector.fit_cache(cache, feature_set="layers",
                             config=replace(FAST, batch_size=32, epochs=20, dropout=0.0, feature_noise=0.5))
    test = cache.select()
    assert binary_metrics(cache.labels(test), det.logits(det.features(cache, test)),
                          scores_are_probs=False)["auc"] > 0.9
