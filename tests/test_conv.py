"""The weighted convolution operator (Sect. 3.2, Eq. 4) against torch and an independent reference."""

from __future__ import annotations

import copy
import inspect
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from wconv.conv import WeightedConv1d, WeightedConv2d, WeightedConv3d, convert, density, fuse, param_groups

TORCH_OF = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
WEIGHTED_OF = {1: WeightedConv1d, 2: WeightedConv2d, 3: WeightedConv3d}


# --- an independent reading of the spec: profiles, Φ and Eq. 4 by shift-and-add ---------------------------------


def profile(coeffs) -> list[float]:
    """(α_1, …, α_m) → (α_1, …, α_m, 1, α_m, …, α_1), written out in Python floats."""
    return [float(c) for c in coeffs] + [1.0] + [float(c) for c in reversed(coeffs)]


def expected_density(profiles) -> torch.Tensor:
    """Φ[i, j, …] = p_0[i] · p_1[j] · …, entry by entry."""
    phi = torch.empty(tuple(len(p) for p in profiles), dtype=torch.float64)
    for idx in itertools.product(*(range(len(p)) for p in profiles)):
        phi[idx] = math.prod(p[i] for p, i in zip(profiles, idx))
    return phi


def reference_conv(x, weight, bias, profiles, stride, padding, dilation, groups, padding_mode):
    """Eq. 4: Σ over kernel offsets of (Φ · w)[offset] times the input shifted by that offset.

    Pads with ``F.pad`` in ``padding_mode`` ('same': d·(K−1) in total, the extra one on the right), then adds
    one strided window of the padded input per kernel offset; no convolution routine is involved.
    """
    ks = weight.shape[2:]
    if padding == "same":
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(ks, dilation)]
    else:
        pads = [(p, p) for p in padding]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    xp = F.pad(x, [v for pair in reversed(pads) for v in pair], mode=mode)
    n, cin, cout = x.shape[0], x.shape[1], weight.shape[0]
    xg = xp.reshape(n, groups, cin // groups, *xp.shape[2:])
    wg = weight.reshape(groups, cout // groups, cin // groups, *ks)
    sizes = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(xp.shape[2:], ks, stride, dilation)]
    out = x.new_zeros(n, groups, cout // groups, *sizes)
    for offset in itertools.product(*(range(k) for k in ks)):
        phi = math.prod(p[o] for p, o in zip(profiles, offset))
        window = tuple(slice(o * d, o * d + (m - 1) * s + 1, s) for o, d, s, m in zip(offset, dilation, stride, sizes))
        shifted = xg[(slice(None),) * 3 + window]
        out += phi * torch.einsum("ngc...,goc->ngo...", shifted, wg[(slice(None),) * 3 + offset])
    out = out.reshape(n, cout, *sizes)
    if bias is not None:
        out += bias.reshape(1, cout, *[1] * len(ks))
    return out


@st.composite
def conv_configs(draw):
    nd = draw(st.integers(1, 3))
    ks = tuple(draw(st.sampled_from([1, 2, 3, 5] if nd < 3 else [1, 2, 3])) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if all(s == 1 for s in stride) and draw(st.booleans()):
        padding = "same"
    else:
        padding = tuple(draw(st.integers(0, d * (k - 1) // 2 + 1)) for k, d in zip(ks, dilation))
    # reflect/circular need padding < input size; every window needs d·(K−1)+1 samples.
    low = [max(d * (k - 1) + 1, (p if padding != "same" else 0) + 1)
           for k, d, p in zip(ks, dilation, padding if padding != "same" else ks)]
    spatial = tuple(draw(st.integers(lo, lo + (2 if nd == 3 else 4))) for lo in low)
    groups = draw(st.integers(1, 3))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))  # cin == groups: depthwise
    odd = [k for k in ks if k > 1]
    if any(k % 2 == 0 for k in ks):
        alpha, profiles = None, [[1.0] * k for k in ks]  # even kernels only take Φ = 1
    else:
        coeffs = [tuple(draw(st.floats(0.05, 3.0)) for _ in range((k - 1) // 2)) for k in ks]
        if len(set(odd)) == 1 and draw(st.booleans()):  # one flat sequence shared by every dimension
            shared = coeffs[ks.index(odd[0])]
            coeffs = [shared if k > 1 else () for k in ks]
            alpha = shared[0] if len(shared) == 1 and draw(st.booleans()) else shared
        else:
            alpha = tuple(coeffs)
        profiles = [profile(c) for c in coeffs]
    return dict(nd=nd, ks=ks, stride=stride, dilation=dilation, padding=padding, padding_mode=padding_mode,
                spatial=spatial, groups=groups, cin=cin, cout=cout, bias=draw(st.booleans()),
                batch=draw(st.integers(1, 2)), alpha=alpha, profiles=profiles)


@settings(max_examples=80, deadline=None)
@given(conv_configs())
def test_matches_independent_shift_and_add_reference_of_eq4(cfg):
    torch.manual_seed(0)
    m = WEIGHTED_OF[cfg["nd"]](cfg["cin"], cfg["cout"], cfg["ks"], cfg["stride"], cfg["padding"], cfg["dilation"],
                               cfg["groups"], cfg["bias"], cfg["padding_mode"], dtype=torch.float64,
                               alpha=cfg["alpha"])
    x = torch.randn(cfg["batch"], cfg["cin"], *cfg["spatial"], dtype=torch.float64)
    expected = reference_conv(x, m.weight.detach(), None if m.bias is None else m.bias.detach(), cfg["profiles"],
                              cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["padding_mode"])
    torch.testing.assert_close(m(x).detach(), expected, rtol=1e-10, atol=1e-12)


# --- torch compatibility -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_constructor_is_torchs_plus_keyword_only_alpha_and_learnable(nd):
    ours = list(inspect.signature(WEIGHTED_OF[nd].__init__).parameters.values())
    theirs = list(inspect.signature(TORCH_OF[nd].__init__).parameters.values())
    describe = lambda ps: [(p.name, p.kind, p.default) for p in ps]  # noqa: E731
    assert describe(ours[: len(theirs)]) == describe(theirs)
    assert describe(ours[len(theirs):]) == [
        ("alpha", inspect.Parameter.KEYWORD_ONLY, None),
        ("learnable", inspect.Parameter.KEYWORD_ONLY, False),
    ]


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"bias": False, "groups": 2}, {"dtype": torch.float64, "stride": 2}])
def test_same_seed_gives_torchs_initial_weight_and_bias(nd, kwargs):
    torch.manual_seed(7)
    theirs = TORCH_OF[nd](4, 6, 3, **kwargs)
    next_theirs = torch.rand(1)
    torch.manual_seed(7)
    ours = WEIGHTED_OF[nd](4, 6, 3, **kwargs, alpha=0.5, learnable=True)
    next_ours = torch.rand(1)
    assert torch.equal(ours.weight, theirs.weight) and ours.weight.dtype == theirs.weight.dtype
    assert (ours.bias is None and theirs.bias is None) or torch.equal(ours.bias, theirs.bias)
    assert torch.equal(next_ours, next_theirs), "the constructor must draw exactly torch's random numbers"


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_weighted_conv_is_an_instance_of_the_torch_conv(nd):
    m = WEIGHTED_OF[nd](2, 2, 3, alpha=0.8)
    assert isinstance(m, TORCH_OF[nd])
    assert not any(isinstance(m, TORCH_OF[other]) for other in TORCH_OF if other != nd)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_has_torchs_keys_and_loads_strictly_both_ways(nd, bias):
    theirs = TORCH_OF[nd](3, 4, 3, bias=bias)
    ours = WEIGHTED_OF[nd](3, 4, 3, bias=bias, alpha=0.5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    phi = ours.density.clone()

    ours.load_state_dict(theirs.state_dict())  # strict by default
    assert torch.equal(ours.weight, theirs.weight)
    assert torch.equal(ours.density, phi), "loading a torch state dict must not touch Φ"

    torch.manual_seed(1)
    other = WEIGHTED_OF[nd](3, 4, 3, bias=bias, alpha=0.5)
    theirs.load_state_dict(other.state_dict())
    assert torch.equal(theirs.weight, other.weight)


def test_repr_shows_alpha():
    assert repr(WeightedConv2d(2, 2, 3, alpha=0.8)).endswith("alpha=(0.8,))")
    assert "alpha=(0.1, 0.9)" in repr(WeightedConv2d(2, 2, 5, alpha=(0.1, 0.9)))
    assert "alpha=((0.8,), (0.1, 0.9))" in repr(WeightedConv2d(2, 2, (3, 5), alpha=((0.8,), (0.1, 0.9))))
    assert "alpha=(0.8,), learnable=True" in repr(WeightedConv1d(2, 2, 3, alpha=0.8, learnable=True))


# --- the density Φ ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel_size, alpha, profiles",
    [
        ((3, 3), 0.8, [[0.8, 1, 0.8]] * 2),
        ((3, 3), (0.8,), [[0.8, 1, 0.8]] * 2),
        ((5, 5), (0.1, 0.9), [[0.1, 0.9, 1, 0.9, 0.1]] * 2),
        ((3, 5), ((0.8,), (0.1, 0.9)), [[0.8, 1, 0.8], [0.1, 0.9, 1, 0.9, 0.1]]),
        ((1, 3), 0.8, [[1], [0.8, 1, 0.8]]),
        ((3, 1), ((0.8,), ()), [[0.8, 1, 0.8], [1]]),
        ((3,), 0.5, [[0.5, 1, 0.5]]),
        ((3, 3, 3), 0.5, [[0.5, 1, 0.5]] * 3),
        ((5, 1, 3), ((0.2, 0.4), None, (0.7,)), [[0.2, 0.4, 1, 0.4, 0.2], [1], [0.7, 1, 0.7]]),
        ((4, 4), None, [[1] * 4] * 2),
        ((3, 2), None, [[1] * 3, [1] * 2]),
    ],
)
def test_density_is_the_outer_product_of_symmetric_profiles(kernel_size, alpha, profiles):
    phi = density(kernel_size, alpha, dtype=torch.float64)
    assert phi.shape == kernel_size
    assert torch.equal(phi, expected_density(profiles))


def test_density_literal_3x3():
    assert torch.equal(density((3, 3), 0.5), torch.tensor([[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]]))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("alpha", [1.0, None])
def test_alpha_one_equals_torch_conv_bit_for_bit(nd, padding_mode, alpha):
    torch.manual_seed(3)
    theirs = TORCH_OF[nd](4, 6, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode)
    torch.manual_seed(3)
    ours = WEIGHTED_OF[nd](4, 6, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode, alpha=alpha)
    x = torch.randn(2, 4, *[7] * nd)
    out_theirs, out_ours = theirs(x), ours(x)
    assert torch.equal(out_ours, out_theirs)
    out_theirs.square().sum().backward()
    out_ours.square().sum().backward()
    assert torch.equal(ours.weight.grad, theirs.weight.grad)


# --- gradients ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: WeightedConv2d(2, 2, 3, padding=1, alpha=0.7, dtype=torch.float64), (1, 2, 4, 4)),
        (lambda: WeightedConv1d(2, 4, 5, padding=2, groups=2, padding_mode="reflect", alpha=(0.3, 0.6),
                                dtype=torch.float64), (1, 2, 6)),
        (lambda: WeightedConv3d(1, 2, (3, 1, 3), alpha=((0.5,), (), (0.8,)), learnable=True,
                                dtype=torch.float64), (1, 1, 3, 2, 3)),
    ],
)
def test_gradcheck_in_float64(make, shape):
    torch.manual_seed(0)
    m = make()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, (x, *(p.detach().clone().requires_grad_() for p in m.parameters())))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_weight_gradient_is_density_times_gradient_of_effective_weight(nd):
    torch.manual_seed(0)
    alpha = tuple((0.3 + 0.2 * d,) for d in range(nd))
    m = WEIGHTED_OF[nd](3, 4, 3, padding=1, dtype=torch.float64, alpha=alpha)
    phi = expected_density([profile(a) for a in alpha])
    x = torch.randn(2, 3, *[5] * nd, dtype=torch.float64)
    grad_out = torch.randn(2, 4, *[5] * nd, dtype=torch.float64)
    m(x).backward(grad_out)

    effective = (m.weight.detach() * phi).requires_grad_()
    m._conv_forward(x, effective, m.bias.detach()).backward(grad_out)
    torch.testing.assert_close(m.weight.grad, phi * effective.grad, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(m.weight.grad, effective.grad), "Φ ≠ 1 must change the weight gradient"


# --- convert and fuse -----------------------------------------------------------------------------------------------


def test_convert_resnet18_weights_exactly_its_3x3_convs_sharing_their_parameters():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    original = copy.deepcopy(model)
    params = dict(model.named_parameters())
    sizes = {n: m.kernel_size for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    assert convert(model, 0.8) is model
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    converted = [n for n, m in model.named_modules() if isinstance(m, WeightedConv2d)]
    assert converted == [n for n, k in sizes.items() if k == (3, 3)] and len(converted) == 16
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n, k in sizes.items() if k != (3, 3))
    assert list(model.state_dict()) == list(original.state_dict())

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, original(x))
        fused = fuse(copy.deepcopy(model))
        assert torch.equal(fused(x), out)
        assert torch.equal(convert(copy.deepcopy(original), 1.0)(x), original(x))


class ConvZoo(nn.Module):
    """One of every kind of conv that ``convert`` must either weight or leave alone."""

    def __init__(self):
        super().__init__()
        self.pointwise = nn.Conv2d(4, 8, 1)
        self.plain3 = nn.Conv2d(8, 8, 3, padding=1)
        self.plain5 = nn.Conv2d(8, 8, 5, padding=2, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.even = nn.Conv2d(8, 8, 4, padding=(1, 2))
        self.anisotropic = nn.Conv2d(8, 8, (3, 5), padding=(1, 2))
        self.seven = nn.Conv2d(8, 8, 7, padding=3, padding_mode="reflect")
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.temporal3 = nn.Conv1d(8, 8, 3, padding=1)
        self.temporal5 = nn.Conv1d(8, 8, 5, padding=2)
        self.volume = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        for name in ("pointwise", "plain3", "plain5", "depthwise", "even", "anisotropic", "seven", "head", "strided"):
            x = getattr(self, name)(x)
        return self.temporal5(self.temporal3(x.flatten(2))), self.volume(x[:, :1].unsqueeze(1))


WEIGHTED_BY_MAPPING = {"plain3", "plain5", "depthwise", "head.0", "strided", "temporal3", "temporal5", "volume"}


@pytest.mark.parametrize(
    "alpha, weighted",
    [
        ({3: 0.8, 5: (0.1, 0.9)}, WEIGHTED_BY_MAPPING),
        (0.8, WEIGHTED_BY_MAPPING - {"plain5", "temporal5"}),
        ({5: (0.1, 0.9)}, {"plain5", "temporal5"}),
    ],
)
def test_convert_weights_only_odd_isotropic_sizes_in_the_mapping(alpha, weighted):
    torch.manual_seed(0)
    model = ConvZoo()
    params = dict(model.named_parameters())
    convert(model, alpha)
    mapping = alpha if isinstance(alpha, dict) else {3: alpha}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    assert {n for n, m in convs.items() if type(m) in WEIGHTED_OF.values()} == weighted
    assert all(type(m) in TORCH_OF.values() for n, m in convs.items() if n not in weighted)
    for n in weighted:
        k = convs[n].kernel_size
        coeffs = mapping[k[0]] if isinstance(mapping[k[0]], tuple) else (mapping[k[0]],)
        assert torch.equal(convs[n].density, expected_density([profile(coeffs)] * len(k)).float())
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())


def test_convert_replaces_a_shared_conv_under_every_name():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = convert(nn.Sequential(conv, nn.ReLU(), conv), 0.8)
    assert type(model[0]) is WeightedConv2d and model[2] is model[0]


@pytest.mark.parametrize("learnable", [False, True])
def test_fuse_gives_plain_torch_convs_with_identical_outputs(learnable):
    torch.manual_seed(0)
    model = convert(ConvZoo(), {3: 0.8, 5: (0.1, 0.9)}, learnable=learnable).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = model(x)
        weights = {n: (m.weight * m.current_density()).clone() for n, m in model.named_modules()
                   if n in WEIGHTED_BY_MAPPING}
        fused = fuse(model)
        outputs = fused(x)
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected))
    convs = {n: m for n, m in fused.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    assert all(type(m) in TORCH_OF.values() for m in convs.values())
    assert all(torch.equal(convs[n].weight, w) for n, w in weights.items())
    assert not any("log_alpha" in n for n, _ in fused.named_parameters())
    ConvZoo().load_state_dict(fused.state_dict())


# --- learnable α --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nd, kernel_size, alpha, coefficients",
    [
        (2, 3, 0.8, [(0.8,), (0.8,)]),
        (2, 5, (0.1, 0.9), [(0.1, 0.9), (0.1, 0.9)]),
        (2, 7, (0.2, 0.5, 0.9), [(0.2, 0.5, 0.9)] * 2),
        (2, (3, 5), ((0.8,), (0.1, 0.9)), [(0.8,), (0.1, 0.9)]),
        (1, 9, (0.1, 0.2, 0.3, 0.4), [(0.1, 0.2, 0.3, 0.4)]),
        (3, (3, 1, 5), ((0.5,), (), (0.6, 0.7)), [(0.5,), (), (0.6, 0.7)]),
    ],
)
def test_learnable_alpha_starts_from_alpha_for_any_odd_size(nd, kernel_size, alpha, coefficients):
    m = WEIGHTED_OF[nd](2, 2, kernel_size, alpha=alpha, learnable=True, dtype=torch.float64)
    assert all(a == pytest.approx(c) for a, c in zip(m.alpha, coefficients))
    assert m.log_alpha.requires_grad
    torch.testing.assert_close(m.current_density(), expected_density([profile(c) for c in coefficients]))


def test_learnable_alpha_trains_stays_positive_and_symmetric():
    torch.manual_seed(0)
    m = WeightedConv2d(1, 1, (3, 5), bias=False, alpha=((0.5,), (0.4, 0.6)), learnable=True)
    nn.init.constant_(m.weight, 1.0)
    m.weight.requires_grad_(False)
    optimizer = torch.optim.SGD(param_groups(m, weight_decay=0.0), lr=0.02)
    x = torch.rand(4, 1, 6, 6)
    for _ in range(20):  # dL/dα ≈ 60–90 here: one plain SGD step on α itself would take it below zero
        optimizer.zero_grad()
        m(x).sum().backward()
        optimizer.step()
    coefficients = [c for dim in m.alpha for c in dim]
    assert all(0 < c < 0.2 for c in coefficients), coefficients
    phi = m.current_density()
    assert torch.equal(phi, phi.flip(0)) and torch.equal(phi, phi.flip(1)) and phi[1, 2] == 1


def test_convert_learnable_trains_alpha_through_the_model():
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 5)), {3: 0.7, 5: (0.3, 0.6)},
                    learnable=True)
    before = [m.alpha for m in model if isinstance(m, WeightedConv2d)]
    optimizer = torch.optim.SGD(param_groups(model, weight_decay=1e-4), lr=0.1)
    x, target = torch.randn(8, 2, 9, 9), torch.randn(8, 1, 3, 3)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(model(x), target).backward()
        optimizer.step()
    after = [m.alpha for m in model if isinstance(m, WeightedConv2d)]
    assert all(a != b for a, b in zip(after, before))


def test_param_groups_keep_density_coefficients_out_of_weight_decay():
    model = convert(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3)),
                    0.7, learnable=True)
    groups = param_groups(model, weight_decay=5e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] == 5e-4 for p in g["params"]}
    free = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert free == {id(model[0].log_alpha), id(model[3].log_alpha)}
    assert decayed == {id(p) for p in model.parameters()} - free
    torch.optim.SGD(groups, lr=0.1)  # a valid optimiser configuration


def test_learned_alpha_survives_a_state_dict_round_trip():
    trained = WeightedConv2d(2, 2, 3, alpha=0.5, learnable=True)
    with torch.no_grad():
        trained.log_alpha.fill_(math.log(0.25))
    fresh = WeightedConv2d(2, 2, 3, alpha=0.5, learnable=True)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.alpha == trained.alpha and fresh.alpha[0][0] == pytest.approx(0.25)


# --- bad input ----------------------------------------------------------------------------------------------------


BAD_ALPHA = [
    ((4, 4), 0.8, r"kernel size 4 is even"),
    ((3, 4), ((0.8,), (0.5,)), r"kernel size 4 is even"),
    ((3, 3), (0.8, 0.9), r"kernel size 3 takes 1 coefficient.*got 2"),
    ((5, 5), 0.8, r"kernel size 5 takes 2 coefficient.*got 1"),
    ((3, 3), (), r"kernel size 3 takes 1 coefficient.*got 0"),
    ((3, 3), 0.0, r"finite and > 0, got 0.0"),
    ((3, 3), -0.5, r"finite and > 0, got -0.5"),
    ((5, 5), (0.5, -0.1), r"finite and > 0, got -0.1"),
    ((3, 3), float("nan"), r"finite and > 0, got nan"),
    ((3, 3), float("inf"), r"finite and > 0, got inf"),
    ((3, 3), (float("-inf"),), r"finite and > 0, got -inf"),
    ((3, 3), "0.8", r"must be a number, a sequence of numbers or one sequence per dimension"),
    ((3, 3), (0.8, "a"), r"kernel size 3 takes 1 coefficient"),
    ((3, 3), ("a",), r"coefficients must be numbers"),
    ((3, 5), 0.8, r"anisotropic; give one coefficient sequence per dimension"),
    ((3, 5), ((0.8,),), r"2 dimension\(s\) but 1 per-dimension sequence"),
    ((3, 3), ((0.8,), (0.8,), (0.8,)), r"2 dimension\(s\) but 3 per-dimension sequence"),
    ((3, 5), ((0.8,), (0.9,)), r"alpha\[1\]: kernel size 5 takes 2 coefficient"),
    ((3, 1), ((0.8,), (0.9,)), r"alpha\[1\]: kernel size 1 takes 0 coefficient"),
    ((1, 1), 0.8, r"no dimension larger than 1"),
]


@pytest.mark.parametrize("kernel_size, alpha, message", BAD_ALPHA)
@pytest.mark.parametrize("learnable", [False, True])
def test_bad_alpha_raises_value_error_saying_what_was_expected(kernel_size, alpha, message, learnable):
    with pytest.raises(ValueError, match=message):
        WEIGHTED_OF[len(kernel_size)](2, 2, kernel_size, alpha=alpha, learnable=learnable)
    with pytest.raises(ValueError, match=message):
        density(kernel_size, alpha)


def test_learnable_alpha_needs_odd_kernel_sizes():
    with pytest.raises(ValueError, match="learnable density needs odd kernel sizes"):
        WeightedConv2d(2, 2, 4, learnable=True)


@pytest.mark.parametrize(
    "alpha, message",
    [
        ({4: 0.8}, r"kernel size keys must be odd integers ≥ 3, got 4"),
        ({1: 0.8}, r"kernel size keys must be odd integers ≥ 3, got 1"),
        ({"3": 0.8}, r"kernel size keys must be odd integers ≥ 3"),
        ({3: (0.8, 0.9)}, r"kernel size 3 takes 1 coefficient"),
        ({5: (0.5, 0.0)}, r"finite and > 0, got 0.0"),
        ({3: float("nan")}, r"finite and > 0"),
        ({3: ((0.8,), (0.8,))}, r"alpha\[3\] must be a number or a flat sequence"),
        ("0.8", r"a number \(3×3\) or a mapping \{kernel size: coefficients\}"),
        (-1.0, r"finite and > 0"),
    ],
)
def test_convert_rejects_bad_alpha_before_touching_the_model(alpha, message):
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 5))
    with pytest.raises(ValueError, match=message):
        convert(model, alpha)
    assert all(type(m) is nn.Conv2d for m in model)


class Conv3x3(nn.Conv2d):
    """A subclass that only configures torch's conv, like torchvision's ``Conv3DSimple``."""

    def __init__(self, planes):
        super().__init__(planes, planes, 3, padding=1, bias=False)


class OwnForward(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


class OwnConvForward(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight.abs(), bias)


def test_convert_weights_a_subclass_that_keeps_torchs_forward():
    torch.manual_seed(0)
    model = nn.Sequential(Conv3x3(2), nn.ReLU())
    weight = model[0].weight
    x = torch.randn(1, 2, 6, 6)
    expected = F.conv2d(x, weight * expected_density([profile((0.6,))] * 2).float(), None, padding=1).relu()
    convert(model, 0.6)
    assert type(model[0]) is WeightedConv2d and model[0].weight is weight
    torch.testing.assert_close(model(x), expected)


def _parametrized():
    conv = nn.Conv2d(2, 2, 3)
    return torch.nn.utils.parametrizations.weight_norm(conv)


@pytest.mark.parametrize("make", [lambda: OwnForward(2, 2, 3), lambda: OwnConvForward(2, 2, 3), _parametrized,
                                  lambda: nn.LazyConv2d(2, 3)],
                         ids=["own forward", "own _conv_forward", "parametrized weight", "lazy"])
def test_convert_leaves_a_conv_with_its_own_computation_alone(make):
    conv = make()
    model = convert(nn.Sequential(conv), 0.6)
    assert model[0] is conv and not isinstance(conv, WeightedConv2d)


def test_convert_weights_torchvision_r3d_18_conv3d_simple_layers():
    from torchvision.models.video import r3d_18
    from torchvision.models.video.resnet import Conv3DSimple

    torch.manual_seed(0)
    model = r3d_18(weights=None).eval()
    original = copy.deepcopy(model)
    params = dict(model.named_parameters())
    simple = [n for n, m in model.named_modules() if type(m) is Conv3DSimple]
    others = {n: m.kernel_size for n, m in model.named_modules() if type(m) is nn.Conv3d}
    assert len(simple) == 16 and set(others.values()) == {(3, 7, 7), (1, 1, 1)}

    convert(model, 0.7)
    assert [n for n, m in model.named_modules() if type(m) is WeightedConv3d] == simple
    assert all(type(model.get_submodule(n)) is nn.Conv3d for n in others)
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    phi = expected_density([profile((0.7,))] * 3).float()
    assert all(torch.equal(model.get_submodule(n).density, phi) for n in simple)

    x = torch.randn(1, 3, 2, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(x), original(x))
        assert torch.equal(convert(copy.deepcopy(original), 1.0)(x), original(x))


# --- dtype, device, memory format, autocast, compile ------------------------------------------------------------


def test_density_is_a_non_persistent_buffer_following_dtype_and_device():
    m = WeightedConv2d(2, 2, 3, alpha=0.8)
    assert "density" in dict(m.named_buffers()) and "density" not in m.state_dict()
    assert m.double().density.dtype == torch.float64
    assert m.half().density.dtype == torch.float16
    assert m.to(torch.float32).density.dtype == torch.float32
    assert m.to("meta").density.device.type == "meta"
    assert m(torch.empty(1, 2, 5, 5, device="meta")).device.type == "meta"


def test_float64_conv_gets_a_float64_density():
    m = WeightedConv2d(2, 2, 5, alpha=(0.1, 0.7), dtype=torch.float64)
    assert torch.equal(m.density, expected_density([profile((0.1, 0.7))] * 2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("learnable_neighbour", [False, True])
def test_changing_dtype_recomputes_density_as_if_built_in_that_dtype(dtype, learnable_neighbour):
    alpha = (0.1, 0.7)
    built = WeightedConv2d(2, 2, 5, alpha=alpha, dtype=dtype)
    model = nn.Sequential(WeightedConv2d(2, 2, 5, alpha=alpha), WeightedConv2d(2, 2, 3, alpha=0.9,
                                                                             learnable=learnable_neighbour))
    converted = model.to(dtype)[0]
    assert converted.density.dtype == dtype
    assert torch.equal(converted.density, built.density)
    assert torch.equal(converted.density, expected_density([profile(alpha)] * 2).to(dtype))
    assert torch.equal(converted.float().density, WeightedConv2d(2, 2, 5, alpha=alpha).density)


def test_float32_density_cast_up_is_not_the_float64_density():
    """Why the density is recomputed: the float32 values cast to float64 keep float32's rounding."""
    alpha = (0.1, 0.7)
    cast = WeightedConv2d(2, 2, 5, alpha=alpha).density.double()
    assert not torch.equal(cast, expected_density([profile(alpha)] * 2))
    assert torch.equal(WeightedConv2d(2, 2, 5, alpha=alpha).double().density, expected_density([profile(alpha)] * 2))


def test_double_gives_outputs_equal_to_a_conv_built_in_float64():
    torch.manual_seed(0)
    m32 = WeightedConv3d(2, 3, 3, padding=1, alpha=0.3)
    m64 = WeightedConv3d(2, 3, 3, padding=1, alpha=0.3, dtype=torch.float64)
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    assert torch.equal(copy.deepcopy(m32).double()(x), m64(x))


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_forward_is_one_product_and_one_convolution_without_transfers():
    m = WeightedConv2d(2, 2, 3, padding=1, alpha=0.8)
    x = torch.randn(1, 2, 5, 5)
    with OpLog() as log:
        m(x)
    assert sorted(log.ops) == ["aten.convolution.default", "aten.mul.Tensor"]


def test_bf16_autocast_on_cpu_uses_the_weight_dtype_density_and_matches_fused():
    torch.manual_seed(0)
    m = WeightedConv2d(3, 4, 3, padding=1, alpha=0.6)
    fused = fuse(nn.Sequential(copy.deepcopy(m)))[0]
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        assert m.effective_weight().dtype == torch.float32
        expected = fused(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    m = WeightedConv2d(4, 6, 3, padding=1, alpha=0.6)
    x = torch.randn(2, 4, 8, 8)
    expected = m(x)
    m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    out = m_cl(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected)


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    m = WeightedConv2d(2, 3, 3, padding=1, alpha=0.6)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))


def test_scale_init_scales_exactly_the_convs_convert_would_weight_by_the_rms_of_their_density():
    from wconv import convert, density_scale, scale_init

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 5), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, (1, 3)))
    before = [m.weight.detach().clone() for m in model]
    scale_init(model, {3: 0.6, 5: (0.1, 0.9)})
    ratios = [(m.weight.detach() / b).unique() for m, b in zip(model, before)]
    phi3 = torch.outer(torch.tensor([0.6, 1, 0.6]), torch.tensor([0.6, 1, 0.6]))
    assert torch.allclose(ratios[0], phi3.square().mean().sqrt().float())  # 0.573 per 3×3 conv
    assert torch.allclose(ratios[1], torch.tensor(density_scale((5, 5), (0.1, 0.9)), dtype=torch.float32))
    assert ratios[2].tolist() == [1.0] and ratios[3].tolist() == [1.0]  # 1×1 and anisotropic: not weighted
    weighted = convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)), 0.6)  # the same selection as convert
    assert [type(m).__name__ for m in weighted] == ["WeightedConv2d", "Conv2d"]


# --- issue 17: convert twice, None in convert's mapping, density's kernel size ---------------------------------


def test_converting_a_converted_model_again_is_refused_and_changes_nothing():
    model = convert(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 5)), 0.8)
    with pytest.raises(ValueError, match=r"convert: 0 is already a weighted 3×3 conv \(alpha=\(0.8,\)\); convert a "
                                         r"fresh model, or wconv.fuse\(model\) first"):
        convert(model, {3: 0.5, 5: (0.2, 0.4)})
    assert model[0].alpha == ((0.8,), (0.8,)) and type(model[1]) is nn.Conv2d  # nothing half-converted
    convert(model, {5: (0.2, 0.4)})  # a size with no weighted conv yet is still converted
    assert model[1].alpha == ((0.2, 0.4), (0.2, 0.4))
    refused = convert(nn.Sequential(nn.Conv2d(2, 2, 3)), 0.8, learnable=True)
    with pytest.raises(ValueError, match="already a weighted 3×3 conv"):
        convert(refused, 0.8)


def test_fuse_then_convert_weights_the_kernels_again_on_purpose():
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Conv2d(2, 2, 3)), 0.8)
    weight = model[0].weight.detach().clone()
    again = convert(fuse(model), 0.5)
    twice = weight * density((3, 3), 0.8) * density((3, 3), 0.5)
    torch.testing.assert_close(again[0].effective_weight(), twice)


@pytest.mark.parametrize("learnable", [False, True])
def test_convert_with_none_gives_a_weighted_conv_with_density_one(learnable):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 5, padding=2))
    x = torch.randn(2, 2, 7, 7)
    expected = plain(x)
    model = convert(copy.deepcopy(plain), {3: None, 5: (0.3, 0.6)}, learnable=learnable)
    assert type(model[0]) is WeightedConv2d and model[0].alpha == ((1.0,), (1.0,))
    assert torch.equal(model[0].current_density(), torch.ones(3, 3))
    assert model[0].learnable is learnable and (model[0].log_alpha is not None) is learnable
    torch.testing.assert_close(model[0](x), plain[0](x))
    assert not torch.allclose(model(x), expected)  # the 5×5 conv is weighted


def test_density_takes_one_size_per_dimension_and_refuses_a_bare_int():
    torch.testing.assert_close(density((3, 3), 0.8), torch.outer(torch.tensor([0.8, 1, 0.8]), torch.tensor([0.8, 1, 0.8])))
    assert torch.equal(density((3,), 0.8), torch.tensor([0.8, 1, 0.8]))
    for bad in (3, 5.0):
        with pytest.raises(ValueError, match=r"density: kernel_size must give one size per dimension, e\.g\. "
                                             r"\(3, 3\) for a 3×3 kernel or \(3,\) for 1-D, got 3"
                           if bad == 3 else "one size per dimension"):
            density(bad, 0.8)


# --- Φ once per step (DensityStep) ----------------------------------------------------------------------------------


class _Mixed(nn.Module):
    """1D, 2D and 3D weighted convs with fixed and learnable α, a plain conv and a conv used twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        f64 = {"dtype": torch.float64}
        shared = WeightedConv2d(4, 4, 3, padding=1, alpha=0.7, **f64)
        self.d1 = WeightedConv1d(2, 3, 5, padding=2, alpha=(0.2, 0.6), **f64)
        self.d2 = nn.Sequential(WeightedConv2d(2, 4, 3, padding=1, alpha=0.5, **f64), shared, shared,
                                WeightedConv2d(4, 4, 3, padding=1, alpha=1.3, learnable=True, **f64),
                                nn.Conv2d(4, 2, 3, padding=1, **f64))
        self.d3 = WeightedConv3d(2, 2, 3, padding=1, alpha=((0.4,), (0.8,), (0.9,)), **f64)

    def forward(self, x1, x2, x3):
        return sum((y ** 2).sum() for y in (self.d1(x1), self.d2(x2), self.d3(x3)))


def test_density_step_gives_the_outputs_and_gradients_of_the_convs_alone_bit_for_bit():
    from wconv.conv import DensityStep

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 2, *[6] * d, generator=g, dtype=torch.float64) for d in (1, 2, 3)]
    alone, stepped = _Mixed(), _Mixed()
    expected = alone(*xs)
    expected.backward()
    step = DensityStep(stepped)
    assert sorted(step.convs) == ["d1.weight", "d2.0.weight", "d2.1.weight", "d3.weight"]  # fixed α, each once
    with step.applied():
        out = step.forward(step.weights(), *xs)
    out.backward()
    assert torch.equal(out, expected)
    for (name, a), b in zip(alone.named_parameters(), stepped.parameters()):
        if name == "d2.1.weight":  # used twice: Φ ∘ (∇_1 + ∇_2) here, Φ ∘ ∇_1 + Φ ∘ ∇_2 alone
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-13, atol=0)
        else:  # ∇W = Φ ∘ ∇(W ∘ Φ), the very product; learnable α and the plain conv as alone
            assert torch.equal(a.grad, b.grad), name
    assert not any(m.weight_is_effective for m in step.convs.values())  # off again once the step is done
    assert torch.equal(stepped(*xs), expected)  # outside applied(): the operator as always


def test_density_step_leaves_the_modules_state_dict_and_meaning_alone_even_after_an_error():
    from wconv.conv import DensityStep

    model = nn.Sequential(WeightedConv2d(2, 2, 3, alpha=0.6), nn.Conv2d(2, 2, 1))
    keys = list(model.state_dict())
    step = DensityStep(model)
    with pytest.raises(RuntimeError):
        with step.applied():
            step.forward(step.weights(), torch.randn(1, 3, 5, 5))  # wrong channel count
    assert not model[0].weight_is_effective and list(model.state_dict()) == keys
    nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 1)).load_state_dict(model.state_dict())
    reference = DensityStep(model, once=False)
    assert reference.convs == {} and reference.weights() == {}


def test_density_step_on_stacked_fused_weights_matches_each_member():
    from torch.func import stack_module_state, vmap

    from wconv.conv import DensityStep

    torch.manual_seed(0)
    members = [WeightedConv2d(2, 3, 5, padding=2, alpha=a, dtype=torch.float64) for a in ((0.2, 0.6), (0.9, 1.1))]
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    step = DensityStep(base)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    run = vmap(lambda p, b: torch.func.functional_call(base, (p, b), (x,)))
    per_conv = run(params, buffers)
    with step.applied():
        out = run({**params, **step.weights(params, buffers)}, buffers)
    assert torch.equal(out, per_conv)  # the same stacked conv on the same products
    for k, m in enumerate(members):  # each member's own Φ (vmap's one wide conv sums in another order)
        torch.testing.assert_close(out[k], m(x), rtol=1e-12, atol=1e-14)


def test_density_step_follows_the_model_to_another_dtype():
    from wconv import DensityStep

    model = nn.Sequential(WeightedConv2d(2, 2, 5, padding=2, alpha=(0.1, 0.7)))
    step = DensityStep(model)
    x = torch.randn(1, 2, 6, 6)
    with step.applied():
        assert torch.equal(step.forward(step.weights(), x), fuse(copy.deepcopy(model))(x))
    model.double()  # Φ is recomputed in float64: the broadcast one is too
    with step.applied():
        out = step.forward(step.weights(), x.double())
    assert out.dtype == torch.float64 and torch.equal(out, fuse(copy.deepcopy(model))(x.double()))
