import pytest

import torch
from torch import nn

from clipdetect.models.sam import SAM, create_sam, disable_running_stats, enable_running_stats, frozen_bn_stats


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    return x, torch.randn(8, 1, generator=g, dtype=torch.float64)


def _hand_sam_update(model, x, y, *, lr, rho, adaptive):
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def loss_at(ps):
        h = torch.tanh(x @ ps[0].T + ps[1])
        return ((h @ ps[2].T + ps[3] - y) ** 2).mean()

    grads = torch.autograd.grad(loss_at(params), params)
    scaled = [(p.abs() if adaptive else 1.0) * g for p, g in zip(params, grads)]
    norm = torch.sqrt(sum((s**2).sum() for s in scaled))
    eps = [rho * (p**2 if adaptive else 1.0) * g / norm for p, g in zip(params, grads)]
    perturbed = [(p + e).detach().requires_grad_(True) for p, e in zip(params, eps)]
    grads2 = torch.autograd.grad(loss_at(perturbed), perturbed)
    return [p.detach() - lr * g for p, g in zip(params, grads2)]


@pytest.mark.parametrize("adaptive", [False, True])
def test_step_matches_hand_computed_update(adaptive):
    model = _tiny_model()
    x, y = _data()
    lr, rho = 0.1, 0.05
    expected = _hand_sam_update(model, x, y, lr=lr, rho=rho, adaptive=adaptive)

    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)

    def closure():
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.zero_grad()
    loss = opt.step(closure)
    assert loss is not None and torch.isfinite(loss)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-12)


def test_explicit_two_step_api_matches_hand_computed_update():
    model = _tiny_model(seed=5)
    x, y = _data(seed=6)
    expected = _hand_sam_update(model, x, y, lr=0.2, rho=0.1, adaptive=False)
    opt = create_sam(model.parameters(), rho=0.1, lr=0.2)
    ((model(x) - y) ** 2).mean().backward()
    opt.first_step(zero_grad=True)
    ((model(x) - y) ** 2).mean().backward()
    opt.second_step(zero_grad=True)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-12)
        assert p.grad is None


def _rosenbrock(w):
    x, y = w[0], w[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("base, kwargs, steps", [
    (torch.optim.Adam, dict(lr=0.05), 1200),
    (torch.optim.SGD, dict(lr=1e-3, momentum=0.9), 1200),
])
def test_rosenbrock_converges(base, kwargs, steps):
    w = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    # a large rho keeps SAM bouncing across the narrow, sharp valley; 1e-3 lets it reach the minimum
    opt = SAM([w], base, rho=1e-3, **kwargs)

    def closure():
        opt.zero_grad()
        loss = _rosenbrock(w)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    assert torch.allclose(w.detach(), torch.ones(2, dtype=torch.float64), atol=0.05)
    assert float(_rosenbrock(w.detach())) < 1e-2


def test_bn_stats_untouched_by_second_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))
    reference = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    reference.train()
    with torch.no_grad():
        reference(x)
    model.train()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    ((model(x) - y) ** 2).mean().backward()
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        ((model(x) - y) ** 2).mean().backward()
    opt.second_step(zero_grad=True)

    bn, ref_bn = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref_bn.running_mean)
    assert torch.equal(bn.running_var, ref_bn.running_var)
    assert int(bn.num_batches_tracked) == 1
    assert bn.momentum == pytest.approx(0.1)
    assert not torch.equal(model[0].weight, reference[0].weight)  # the step did move the weights


def test_disable_enable_running_stats_restore_cumulative_momentum():
    bn = nn.BatchNorm1d(3, momentum=None)
    disable_running_stats(bn)
    assert bn.momentum == 0.0
    before = bn.running_mean.clone()
    bn(torch.randn(5, 3))
    assert torch.equal(bn.running_mean, before)
    enable_running_stats(bn)
    assert bn.momentum is None and int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("wrap_base", [False, True])
def test_lr_scheduler_changes_base_step_lr(wrap_base):
    w = torch.zeros(1, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.0, lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt.base_optimizer if wrap_base else opt, T_max=2)

    def closure():
        opt.zero_grad()
        loss = -w.sum()  # gradient -1, so SGD moves w by +lr
        loss.backward()
        return loss

    opt.step(closure)
    assert float(w.detach()) == pytest.approx(1.0)
    sched.step()  # lr = 0.5 * (1 + cos(pi / 2)) = 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    opt.step(closure)
    assert float(w.detach()) == pytest.approx(1.5)


def test_zero_gradient_gives_no_nan():
    w = torch.ones(3, requires_grad=True)
    for adaptive in (False, True):
        opt = SAM([w], torch.optim.SGD, rho=0.05, adaptive=adaptive, lr=0.1)
        opt.zero_grad()
        opt.step(lambda: (w * 0).sum().backward())
        assert torch.equal(w.detach(), torch.ones(3))


def test_state_dict_round_trip_keeps_groups_shared():
    w = torch.ones(2, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        (w**2).sum().backward()

    opt.step(closure)
    state = opt.state_dict()
    w2 = torch.ones(2, requires_grad=True)
    opt2 = SAM([w2], torch.optim.SGD, rho=0.05, lr=0.3, momentum=0.9)
    opt2.load_state_dict(state)
    assert opt2.base_optimizer.param_groups is opt2.param_groups
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)
    buf = opt2.base_optimizer.state[w2]["momentum_buffer"]
    assert torch.allclose(buf, opt.base_optimizer.state[w]["momentum_buffer"])


def test_rejects_negative_rho_and_missing_closure():
    w = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match="rho"):
        SAM([w], torch.optim.SGD, rho=-1.0, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        SAM([w], torch.optim.SGD, lr=0.1).step()


class _PerParamSAM:
    """Independent reference: SAM with one operation per parameter (no foreach kernels)."""

    def __init__(self, groups, base_cls, **base_kwargs):
        self.base = base_cls(groups, **base_kwargs)
        self.groups = self.base.param_groups
        self.e_w = {}

    @torch.no_grad()
    def first_step(self):
        sq = 0.0
        for g in self.groups:
            for p in g["params"]:
                if p.grad is not None:
                    sq = sq + float(((p.abs() if g["adaptive"] else 1.0) * p.grad).norm()) ** 2
        norm = sq ** 0.5
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    self.e_w.pop(p, None)
                    continue
                e = (p**2 if g["adaptive"] else 1.0) * p.grad * (g["rho"] / (norm + 1e-12))
                p.add_(e)
                self.e_w[p] = e
                p.grad = None

    @torch.no_grad()
    def second_step(self):
        for p, e in self.e_w.items():
            p.sub_(e)
        self.e_w.clear()
        self.base.step()
        self.base.zero_grad()


class _Mixed(nn.Module):
    """float64 layers, a float32 scale and a parameter used only on some steps (no gradient on the others)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(3, 5).double()
        self.b = nn.Linear(5, 1).double()
        self.scale32 = nn.Parameter(torch.tensor([1.3, -0.7, 0.4], dtype=torch.float32))
        self.extra = nn.Parameter(torch.randn(5, dtype=torch.float64))

    def forward(self, x, use_extra):
        h = torch.tanh(self.a(x * self.scale32.double()))
        return self.b(h * self.extra if use_extra else h)


def _groups(m, adaptive):
    return [{"params": [m.a.weight, m.a.bias, m.scale32], "adaptive": adaptive, "rho": 0.1},
            {"params": [m.b.weight, m.b.bias, m.extra], "adaptive": not adaptive, "rho": 0.03}]


@pytest.mark.parametrize("adaptive", [False, True])
def test_foreach_steps_match_per_parameter_reference(adaptive):
    model, ref = _Mixed(), _Mixed()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    opt = SAM(_groups(model, adaptive), torch.optim.SGD, **kw)
    ref_opt = _PerParamSAM(_groups(ref, adaptive), torch.optim.SGD, **kw)
    g = torch.Generator().manual_seed(7)

    def backward(m, x, y, use_extra):
        ((m(x, use_extra) - y) ** 2).mean().backward()

    for step in range(6):
        x = torch.randn(16, 3, generator=g, dtype=torch.float64)
        y = torch.randn(16, 1, generator=g, dtype=torch.float64)
        use_extra = step % 2 == 0
        if step == 3:  # a first step whose offset for `extra` must be dropped: no gradient at the next one
            for m, o in ((model, opt), (ref, ref_opt)):
                backward(m, x, y, True)
                o.first_step() if o is ref_opt else o.first_step(zero_grad=True)
        for m, o in ((model, opt), (ref, ref_opt)):
            backward(m, x, y, use_extra)
            o.first_step() if o is ref_opt else o.first_step(zero_grad=True)
            backward(m, x, y, use_extra)
            o.second_step() if o is ref_opt else o.second_step(zero_grad=True)
        if step == 2:  # resume from a state dict halfway
            state = opt.state_dict()
            opt = SAM(_groups(model, adaptive), torch.optim.SGD, lr=1.0)
            opt.load_state_dict(state)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            tol = dict(rtol=1e-5, atol=1e-6) if p.dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
            assert torch.allclose(p, q, **tol), (step, name, (p - q).abs().max())
    assert not torch.equal(model.extra, _Mixed().extra)  # the sometimes-unused parameter did train
    assert all("e_w" not in s for s in opt.state.values())
