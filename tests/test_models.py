"""The model registry: every model builds, trains a few steps on CPU, and is weighted fairly (same init, same
parameter count) with only its K×K convs weighted."""

from __future__ import annotations

import typing

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wconv import WeightedConv2d, models
from wconv.models.snn import LIF

# Small width / input per model: (build options, input shape).
SMALL = {
    "resnet56": (dict(width=0.25), (2, 3, 16, 16)),
    "vgg16": (dict(width=0.125), (2, 3, 32, 32)),
    "nin": (dict(width=0.125), (2, 3, 16, 16)),
    "gmlp": (dict(width=0.25, depth=2, image_size=16), (2, 3, 16, 16)),
    "gac_snn": (dict(width=0.125, steps=2), (2, 3, 16, 16)),
    "efficientnet_b0": (dict(width=0.25), (2, 3, 32, 32)),
    "tiny_cnn": (dict(), (2, 1, 8, 8)),
    "dncnn": (dict(width=0.25), (2, 3, 16, 16)),
    "nafnet": (dict(width=0.25), (2, 3, 13, 19)),
    "cgnet": (dict(width=0.25), (2, 3, 13, 19)),
    "tiny_denoiser": (dict(), (2, 3, 16, 16)),
}
CLASSIFIERS = ["efficientnet_b0", "gac_snn", "gmlp", "nin", "resnet56", "tiny_cnn", "vgg16"]
DENOISERS = ["cgnet", "dncnn", "nafnet", "tiny_denoiser"]
ALPHA = {3: 0.8, 5: (0.5, 0.9)}

# Paper-size (default) parameter counts, as listed in docs/models.md.
PAPER_PARAMS = {
    "resnet56": 858_868, "vgg16": 14_770_212, "nin": 681_636, "gmlp": 4_789_284, "gac_snn": 12_622_004,
    "efficientnet_b0": 4_135_648, "tiny_cnn": 14_458, "dncnn": 558_400, "nafnet": 4_497_507,
    "cgnet": 6_307_203, "tiny_denoiser": 20_256,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(name: str, *, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(name, **SMALL[name][0], **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def square_convs(model: nn.Module, k: int) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (k, k)]


def test_available_lists_every_model_by_task():
    assert models.available("classification") == CLASSIFIERS
    assert models.available("denoising") == DENOISERS
    assert models.available() == sorted(CLASSIFIERS + DENOISERS)
    assert {models.task_of(n) for n in DENOISERS} == {"denoising"}


def test_unknown_model_name_raises_listing_the_available_ones():
    with pytest.raises(ValueError, match="resnet56.*vgg16|vgg16.*resnet56"):
        models.build("resnet57")


def test_unknown_option_raises_naming_it():
    with pytest.raises(TypeError, match="'colour'"):
        models.build("dncnn", colour=True)


def test_even_kernel_size_is_rejected():
    with pytest.raises(ValueError, match="kernel_size"):
        models.build("tiny_cnn", kernel_size=4)


def test_denoisers_reject_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        models.build("tiny_denoiser", num_classes=10)


def test_options_are_width_and_the_builders_own_keywords_with_their_types():
    resnet = models.options("resnet56")
    assert list(resnet) == ["width", "depth", "shortcut"]
    assert (resnet["width"].annotation, resnet["width"].default) == (float, 1.0)
    assert (resnet["depth"].annotation, resnet["depth"].default) == (int, 56)
    assert typing.get_args(resnet["shortcut"].annotation) == ("A", "B")
    assert list(models.options("vgg16")) == ["width"]
    for name in models.available():
        assert {"kernel_size", "alpha", "in_channels", "num_classes"}.isdisjoint(models.options(name)), name


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_declared_option_is_accepted_at_its_default(name):
    models.check_options(name, **{k: p.default for k, p in models.options(name).items()})


@pytest.mark.parametrize("name, options, message", [
    ("resnet56", dict(depth=7), r"depth must be 6n\+2"),
    ("resnet56", dict(shortcut="C"), "shortcut must be 'A'"),
    ("cgnet", dict(gce_convs=(3, 3)), "needs one entry per encoder level"),
    ("gmlp", dict(image_size=30), "not a multiple of patch_size"),
    ("tiny_cnn", dict(width=0), "width must be > 0"),
    ("tiny_cnn", dict(colour=1), "unknown option"),
])
def test_check_options_raises_what_build_raises_without_initialising_anything(name, options, message):
    with pytest.raises((ValueError, TypeError), match=message) as built:
        models.build(name, **options)
    rng = torch.get_rng_state()
    with pytest.raises(built.type, match=message):
        models.check_options(name, **options)
    assert torch.equal(torch.get_rng_state(), rng), "check_options must not draw initial weights"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_alpha_leaves_initial_weights_identical(name):
    plain, weighted = small(name), small(name, alpha=ALPHA[3])
    a, b = dict(plain.named_parameters()), dict(weighted.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_alpha_leaves_parameter_count_unchanged(name):
    assert n_params(small(name)) == n_params(small(name, alpha=ALPHA[3]))


# 5×5 on the denoisers, and on EfficientNet (5×5 stem and its own 5×5 depthwise convs).
@pytest.mark.parametrize("name, kernel_size", [(n, 3) for n in sorted(SMALL)]
                         + [(n, 5) for n in DENOISERS + ["efficientnet_b0"]])
def test_convert_weights_exactly_the_kernel_size_convs(name, kernel_size):
    plain = small(name, kernel_size=kernel_size)
    weighted = small(name, kernel_size=kernel_size, alpha=ALPHA[kernel_size])
    expected = len(square_convs(plain, kernel_size))
    got = [m for m in weighted.modules() if isinstance(m, WeightedConv2d)]
    assert expected > 0 and len(got) == expected
    assert all(m.kernel_size == (kernel_size, kernel_size) for m in got)  # 1×1, 2×2, 4×4… stay standard
    assert not any(type(m) is nn.Conv2d for m in square_convs(weighted, kernel_size))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("alpha", [None, ALPHA[3]], ids=["standard", "weighted"])
def test_few_sgd_steps_on_cpu_keep_shapes_and_finite_loss(name, alpha):
    model = small(name, alpha=alpha)
    shape = SMALL[name][1]
    torch.manual_seed(1)
    x = torch.rand(shape)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        out = model(x)
        if models.task_of(name) == "classification":
            assert out.shape == (shape[0], 100 if name != "tiny_cnn" else 10)
            loss = F.cross_entropy(out, torch.arange(shape[0]))
        else:
            assert out.shape == shape
            loss = F.mse_loss(model(x + 0.01 * torch.randn_like(x)), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", DENOISERS)
def test_denoisers_build_train_and_keep_size_with_5x5_kernels(name):
    model = small(name, kernel_size=5, alpha=ALPHA[5])
    x = torch.rand(SMALL[name][1])
    out = model(x)
    assert out.shape == x.shape
    F.mse_loss(out, x).backward()
    weighted = [m for m in model.modules() if isinstance(m, WeightedConv2d)]
    assert all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in weighted)


@pytest.mark.parametrize("name", ["nafnet", "cgnet"])
@pytest.mark.parametrize("size", [(7, 9), (32, 17)])
def test_unet_denoisers_pad_and_crop_any_input_size(name, size):
    model = small(name).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == x.shape


@pytest.mark.parametrize("name", ["dncnn", "tiny_denoiser"])
def test_residual_denoisers_output_input_minus_predicted_noise(name):
    model = small(name).eval()
    last = model.body[-1]
    nn.init.zeros_(last.weight)  # the noise estimate is now 0
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_unet_blocks_start_as_identity():
    """β = γ = 0 at init (NAFNet): an untrained NAFNet with a zeroed ending conv returns its input."""
    model = small("nafnet").eval()
    nn.init.zeros_(model.ending.weight)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_gac_even_kernel_option_stays_standard():
    model = small("gac_snn", gac_kernel=4, alpha=ALPHA[3])
    assert all(type(m) is nn.Conv2d for m in model.gac.spatial.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.rand(SMALL["gac_snn"][1])).shape == (2, 100)


def test_same_seed_gives_same_model():
    assert all(torch.equal(a, b) for a, b in zip(small("resnet56").parameters(), small("resnet56").parameters()))


def test_lif_spikes_are_binary_with_rectangular_surrogate_gradient():
    lif = LIF(threshold=0.5, decay=0.25, window=0.5)
    u = torch.tensor([[0.2], [0.7], [1.2]], requires_grad=True)  # one input per time step
    spikes = lif(u)
    # membranes: 0.2 (no spike); 0.2·0.25 + 0.7 = 0.75 (spike); reset → 1.2 (spike)
    assert spikes.flatten().tolist() == [0.0, 1.0, 1.0]
    spikes.sum().backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_width_and_depth_options_shrink_the_model():
    assert n_params(models.build("resnet56", depth=20)) < n_params(models.build("resnet56"))
    assert n_params(models.build("dncnn", width=0.5)) < n_params(models.build("dncnn"))


def test_in_channels_and_num_classes_are_honoured():
    model = models.build("resnet56", width=0.25, in_channels=1, num_classes=10)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    assert models.build("dncnn", width=0.25, depth=3, in_channels=1)(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_size_parameter_counts_match_the_docs(name):
    assert n_params(models.build(name)) == PAPER_PARAMS[name]
