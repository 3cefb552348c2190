"""Weighted convolution (Sect. 3.2, Eq. 4): a torch conv whose kernels are multiplied by a density Φ.

Φ is the outer product of one symmetric profile per kernel dimension, each profile
(α_1, …, α_m, 1, α_m, …, α_1) with centre 1 (2D: Φ = ααᵀ as in the paper). The layers
subclass ``nn.Conv1d/2d/3d`` with torch's exact constructor, so init loops, state dicts and
``isinstance`` checks written for torch convs keep working.

Used alone, each conv computes ``W ∘ Φ`` in its forward and ``Φ ∘ ∇`` in its backward: two operators per
conv per step. On a CPU each costs a dispatch, on a GPU a kernel launch, so a deep model pays for the
density in proportion to its depth. ``DensityStep`` is what a training step (``wconv.train``,
``wconv.fused``) turns on for a whole model instead: Φ applied once per step, a constant number of
operators whatever the number of convs.

Two exact forms were weighed; the multi-tensor one is used:

- *multi-tensor*: before the forward, every conv's ``W_i ∘ Φ_i`` in one ``torch._foreach_mul``; the convs
  run on those weights (``functional_call``); the backward of that one product is one more,
  ``∇W_i = Φ_i ∘ ∇V_i`` with V_i = W_i ∘ Φ_i. Every product is the one the conv computes alone, element for
  element, so the gradients, hence any optimiser's steps (SGD, momentum, Nesterov, weight decay, Adam), are
  bit-identical (but for a conv called twice in one forward: Φ ∘ (∇_1 + ∇_2) for Φ ∘ ∇_1 + Φ ∘ ∇_2, equal
  up to rounding), and the parameters stay W (state dicts, checkpoints and ``fuse`` unchanged). Φ is
  broadcast to each weight's shape and strides once and kept, so the product takes the multi-tensor
  kernel's fast path (one CUDA launch for all tensors).
- *reparametrised*: the convs hold V = Φ ∘ W and train it with ``g_V`` preconditioned by Φ². With
  ``g_W = Φ ∘ g_V``, SGD's recursion ``b ← μ b + g_W + λ W``, ``W ← W − η b`` multiplied by the fixed Φ
  is ``Φb ← μ Φb + Φ² ∘ g_V + λ V``, ``V ← V − η Φb``: the same trajectory (up to rounding) for momentum,
  Nesterov, weight decay and any LR schedule, with one operator per step (``Φ² ∘ g_V`` after the backward)
  and none in the forward. Not for Adam (its ε is not scaled by Φ), not for learnable α (Φ changes, so V
  must be rescaled), and W = V / Φ must be recovered for every checkpoint and best-epoch state.

Measured on ResNet-56 (55 weighted 3×3 convs, batch 32, one CPU thread, SGD with momentum and weight
decay, CPU time, interleaved against the standard model), the outermost aten operators the density adds
per step are 110 with each conv alone, 2 multi-tensor and 1 reparametrised; weighted/standard 1.020,
0.996 and 1.001, with a standard/standard control at 1.024. Both forms are inside this machine's noise, so
exactness for every optimiser and an unchanged parameter format decide. Learnable-α convs keep their own
forward (their Φ is recomputed from α at every call, a handful of operators of its own), exact as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Optional, Union

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.nn.utils import parametrize

Coefficients = Union[float, Sequence[float]]
Alpha = Union[None, Coefficients, Sequence[Union[None, Sequence[float]]]]

_TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check_coefficients(coeffs: Sequence[float], size: int, where: str) -> tuple[float, ...]:
    if size % 2 == 0:
        raise ValueError(f"alpha{where}: kernel size {size} is even; a density needs an odd size (or alpha=None)")
    expected = (size - 1) // 2
    if len(coeffs) != expected:
        raise ValueError(
            f"alpha{where}: kernel size {size} takes {expected} coefficient(s) from the outer edge inward, "
            f"got {len(coeffs)}: {tuple(coeffs)}"
        )
    out = []
    for c in coeffs:
        if not _is_number(c):
            raise ValueError(f"alpha{where}: coefficients must be numbers, got {c!r}")
        c = float(c)
        if not math.isfinite(c) or c <= 0:
            raise ValueError(f"alpha{where}: coefficients must be finite and > 0, got {c}")
        out.append(c)
    return tuple(out)


def parse_alpha(kernel_size: Sequence[int], alpha: Alpha) -> tuple[tuple[tuple[float, ...], ...], bool]:
    """Validate ``alpha`` against ``kernel_size``.

    Returns the free coefficients per dimension and whether one profile is shared by every
    dimension (a single number or flat sequence: the paper's β = α).
    """
    ks = tuple(int(k) for k in kernel_size)
    if alpha is None:
        return tuple(((1.0,) * ((k - 1) // 2)) if k % 2 else () for k in ks), len(set(ks)) == 1
    if _is_number(alpha):
        alpha = (alpha,)
    if not isinstance(alpha, Sequence) or isinstance(alpha, str):
        raise ValueError(f"alpha must be a number, a sequence of numbers or one sequence per dimension, got {alpha!r}")
    if len(alpha) > 0 and all(a is None or (isinstance(a, Sequence) and not isinstance(a, str)) for a in alpha):
        if len(alpha) != len(ks):
            raise ValueError(
                f"alpha: kernel {ks} has {len(ks)} dimension(s) but {len(alpha)} per-dimension sequence(s) were given"
            )
        per_dim = tuple(
            () if (k == 1 and not a) else _check_coefficients(tuple(a or ()), k, f"[{d}]")
            for d, (k, a) in enumerate(zip(ks, alpha))
        )
        return per_dim, False
    sizes = {k for k in ks if k > 1}
    if len(sizes) > 1:
        raise ValueError(f"alpha: kernel {ks} is anisotropic; give one coefficient sequence per dimension")
    if not sizes:
        raise ValueError(f"alpha: kernel {ks} has no dimension larger than 1 to weight; use alpha=None")
    coeffs = _check_coefficients(tuple(alpha), sizes.pop(), "")
    return tuple(coeffs if k > 1 else () for k in ks), True


def _profile(coeffs: torch.Tensor) -> torch.Tensor:
    """(α_1, …, α_m) → (α_1, …, α_m, 1, α_m, …, α_1)."""
    return torch.cat([coeffs, coeffs.new_ones(1), coeffs.flip(0)])


def _outer(profiles: Sequence[torch.Tensor]) -> torch.Tensor:
    phi = profiles[0]
    for p in profiles[1:]:
        phi = phi.unsqueeze(-1) * p
    return phi


def _phi(kernel_size: Sequence[int], per_dim: Sequence[Sequence[float]], dtype: torch.dtype,
         device: torch.device | str | None) -> torch.Tensor:
    """Φ from the free coefficients per dimension (none: ones), in float64, rounded once to ``dtype``."""
    profiles = [_profile(torch.tensor(c, dtype=torch.float64)) if c else torch.ones(k, dtype=torch.float64)
                for k, c in zip(kernel_size, per_dim)]
    return _outer(profiles).to(dtype=dtype, device=device)


def density(kernel_size: Sequence[int], alpha: Alpha, *, dtype: torch.dtype = torch.float32,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Φ for ``kernel_size``, one entry per dimension, with that shape: ``density((3, 3), 0.8)`` is ααᵀ with
    α = (0.8, 1, 0.8), ``density((3,), 0.8)`` the 1-D profile itself.

    A bare int is refused: without a conv, nothing says how many dimensions it stands for (torch broadcasts
    a conv's int to the conv's own dimension). Computed in float64 and rounded once to ``dtype``;
    ``alpha=None`` gives ones of any size.
    """
    if isinstance(kernel_size, int) or not isinstance(kernel_size, Sequence):
        raise ValueError(f"density: kernel_size must give one size per dimension, e.g. ({kernel_size}, {kernel_size}) "
                         f"for a {kernel_size}×{kernel_size} kernel or ({kernel_size},) for 1-D, got {kernel_size!r}")
    ks = tuple(int(k) for k in kernel_size)
    per_dim, _ = parse_alpha(ks, alpha)
    return _phi(ks, per_dim, dtype, device)


class _WeightedConv:
    """What the three weighted convs add to torch's: Φ, and ``weight ∘ Φ`` in ``forward``."""

    density: torch.Tensor
    weight: nn.Parameter

    def _init_density(self, alpha: Alpha, learnable: bool) -> None:
        per_dim, tied = parse_alpha(self.kernel_size, alpha)
        self.learnable = learnable
        self._buffers.pop("density", None)
        # Φ and α live in the weight's dtype, so a float64 conv gets a float64 density.
        device, dtype = self.weight.device, self.weight.dtype
        if not learnable:
            self.log_alpha = None
            self._alpha = per_dim
            self.register_buffer("density", _phi(self.kernel_size, self._alpha, dtype, device), persistent=False)
            return
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"learnable density needs odd kernel sizes, got {tuple(self.kernel_size)}")
        # log-parametrisation keeps α > 0; tied profiles share one vector (Φ stays ααᵀ, symmetric).
        if tied:
            init = next((c for c in per_dim if c), ())
            slices = tuple((0, len(init)) if c else None for c in per_dim)
        else:
            init, slices, start = (), [], 0
            for c in per_dim:
                slices.append((start, start + len(c)) if c else None)
                init, start = init + c, start + len(c)
            slices = tuple(slices)
        self._alpha_slices = slices
        self.log_alpha = nn.Parameter(torch.log(torch.tensor(init, dtype=torch.float64)).to(dtype=dtype, device=device))

    def _apply(self, fn, recurse=True):
        # Φ is a function of α, not state: rounding the float32 values up to float64 would keep float32's error, so
        # after .to()/.double()/.half() it is recomputed from the Python-float α in whatever dtype fn gave the buffer.
        super()._apply(fn, recurse)
        if self.log_alpha is None:
            self.density = _phi(self.kernel_size, self._alpha, self.density.dtype, self.density.device)
        return self

    def current_density(self) -> torch.Tensor:
        if self.log_alpha is None:
            return self.density
        coeffs = self.log_alpha.exp()
        profiles = [coeffs.new_ones(1) if s is None else _profile(coeffs[s[0]:s[1]]) for s in self._alpha_slices]
        return _outer(profiles)

    @property
    def alpha(self) -> tuple[tuple[float, ...], ...]:
        """Free coefficients per dimension, outer edge inward (current values when learnable)."""
        if self.log_alpha is None:
            return self._alpha
        coeffs = self.log_alpha.detach().exp().tolist()
        return tuple(() if s is None else tuple(coeffs[s[0]:s[1]]) for s in self._alpha_slices)

    def effective_weight(self) -> torch.Tensor:
        """``weight ∘ Φ`` (Eq. 4), Φ cast to the weight's dtype when they differ (not dispatched when not)."""
        phi = self.current_density()
        return self.weight * (phi if phi.dtype == self.weight.dtype else phi.to(self.weight.dtype))

    weight_is_effective = False
    """True only inside ``DensityStep.applied()``: ``weight`` is then already ``weight ∘ Φ``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight_is_effective else self.effective_weight()
        return self._conv_forward(input, weight, self.bias)

    def extra_repr(self) -> str:
        alpha = tuple(tuple(round(c, 4) for c in a) for a in self.alpha)
        shown = alpha[0] if len(set(alpha)) == 1 else alpha
        return super().extra_repr() + f", alpha={shown}" + (", learnable=True" if self.learnable else "")


class WeightedConv1d(_WeightedConv, nn.Conv1d):
    """``nn.Conv1d`` with kernels weighted by a symmetric density profile."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, alpha: Alpha = None,
                 learnable: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_density(alpha, learnable)


class WeightedConv2d(_WeightedConv, nn.Conv2d):
    """``nn.Conv2d`` with kernels weighted by Φ = ααᵀ (the paper's operator)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, alpha: Alpha = None,
                 learnable: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_density(alpha, learnable)


class WeightedConv3d(_WeightedConv, nn.Conv3d):
    """``nn.Conv3d`` with kernels weighted by the three-way product of profiles."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, alpha: Alpha = None,
                 learnable: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_density(alpha, learnable)


_WEIGHTED_OF = {nn.Conv1d: WeightedConv1d, nn.Conv2d: WeightedConv2d, nn.Conv3d: WeightedConv3d}
_TORCH_OF = {v: k for k, v in _WEIGHTED_OF.items()}


def _twin(conv: nn.Module, cls: type) -> nn.Module:
    """A module of ``cls`` with ``conv``'s hyper-parameters, built on the meta device (no allocation)."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
              conv.groups, conv.bias is not None, conv.padding_mode, device="meta", dtype=conv.weight.dtype)
    new.train(conv.training)
    return new


def _replace(model: nn.Module, swap) -> nn.Module:
    """Apply ``swap(module) -> module | None`` to every module; replace those it returns.

    A module registered under several names is swapped once and replaced under every name.
    """
    root = swap(model)
    if root is not None:
        return root
    swapped: dict[int, nn.Module | None] = {}
    for parent in list(model.modules()):
        for attr, child in list(parent._modules.items()):  # named_children() would skip repeats
            if child is None:
                continue
            if id(child) not in swapped:
                swapped[id(child)] = swap(child)
            if swapped[id(child)] is not None:
                setattr(parent, attr, swapped[id(child)])
    return model


def _as_mapping(alpha) -> dict[int, Coefficients]:
    if _is_number(alpha):
        return {3: alpha}
    if not isinstance(alpha, Mapping):
        raise ValueError(f"convert: alpha must be a number (3×3) or a mapping {{kernel size: coefficients}}, got {alpha!r}")
    out = {}
    for k, v in alpha.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 3 or k % 2 == 0:
            raise ValueError(f"convert: kernel size keys must be odd integers ≥ 3, got {k!r}")
        if not (v is None or _is_number(v) or (isinstance(v, Sequence) and all(_is_number(c) for c in v))):
            raise ValueError(f"convert: alpha[{k}] must be a number or a flat sequence of numbers (or None: Φ = 1), "
                             f"got {v!r}")
        parse_alpha((k,), v)
        out[k] = v
    return out


def _torch_conv_of(m: nn.Module) -> type | None:
    """The torch conv whose computation ``m`` runs unchanged, or None.

    A subclass that only configures torch's conv (its own ``__init__``, torch's ``forward`` and ``_conv_forward``,
    e.g. torchvision's ``Conv3DSimple``) computes exactly what its base does, so its weighted twin is faithful; one
    that overrides either, is parametrized (its ``weight`` is computed) or is lazy (no weight yet) is not.
    """
    for base in _WEIGHTED_OF:
        if isinstance(m, base):
            own = type(m).forward is base.forward and type(m)._conv_forward is base._conv_forward
            plain = not isinstance(m, (_WeightedConv, nn.modules.lazy.LazyModuleMixin))
            return base if own and plain and not parametrize.is_parametrized(m) else None
    return None


def convert(model: nn.Module, alpha: Mapping[int, Coefficients] | float, *, learnable: bool = False) -> nn.Module:
    """Weight, in place, every torch conv whose kernel is the same odd size in every dimension.

    A torch conv is ``nn.Conv1d/2d/3d`` or a subclass that keeps torch's ``forward`` and ``_conv_forward``; it
    becomes the ``WeightedConv1d/2d/3d`` of its dimension. The twin shares the very same weight and bias
    ``Parameter`` objects, so names, counts and optimiser state are unchanged. Sizes missing from ``alpha``, 1×1,
    even and anisotropic kernels, and subclasses with their own computation are left alone. ``None`` for a size
    gives Φ = 1 (with ``learnable=True``: α learnt from 1).

    A model that already has weighted convs of a size in ``alpha`` is refused (``ValueError``), since weighting
    them again could mean replacing their α or multiplying it: convert a fresh model, or ``fuse`` it first to
    weight the weighted kernels once more on purpose.
    """
    by_size = _as_mapping(alpha)
    weighted = [(name, m) for name, m in model.named_modules() if isinstance(m, _WeightedConv)
                and len(set(m.kernel_size)) == 1 and m.kernel_size[0] in by_size]
    if weighted:
        name, m = weighted[0]
        size = "×".join(map(str, m.kernel_size))
        raise ValueError(f"convert: {name or 'the model'} is already a weighted {size} conv (alpha={m.alpha[0]})"
                         + (f" and {len(weighted) - 1} more" if len(weighted) > 1 else "")
                         + "; convert a fresh model, or wconv.fuse(model) first to weight its kernels again on purpose")

    def swap(m: nn.Module):
        base = _torch_conv_of(m)
        if base is None or len(set(m.kernel_size)) != 1 or m.kernel_size[0] not in by_size:
            return None
        new = _twin(m, _WEIGHTED_OF[base])
        new.weight, new.bias = m.weight, m.bias
        new._init_density(by_size[m.kernel_size[0]], learnable)
        return new

    return _replace(model, swap)


def density_scale(kernel_size: int | Sequence[int], alpha: Alpha) -> float:
    """√mean(Φ²): how much weighting with α scales a kernel of i.i.d. initial weights, on average."""
    return float(density(kernel_size, alpha, dtype=torch.float64).square().mean().sqrt())


def scale_init(model: nn.Module, alpha: Mapping[int, Coefficients] | float) -> nn.Module:
    """Multiply, in place, the weights of every conv ``convert`` would weight by its α's ``density_scale``.

    The density's scale at initialisation without its shape: a standard-convolution control that tells how
    much of a weighted model's gain comes from Φ rescaling the initial weights (e.g. 0.57× per 3×3 conv at
    α = 0.6). Run it on freshly initialised weights, before any training.
    """
    by_size = _as_mapping(alpha)
    with torch.no_grad():
        for m in model.modules():
            base = _torch_conv_of(m)
            if base is not None and len(set(m.kernel_size)) == 1 and m.kernel_size[0] in by_size:
                m.weight.mul_(density_scale(m.kernel_size, by_size[m.kernel_size[0]]))
    return model


def _would_weight(model: nn.Module, by_size: Mapping[int, Coefficients]) -> list[nn.Module]:
    """The torch convs ``convert(model, by_size)`` would weight, each once."""
    out, seen = [], set()
    for m in model.modules():
        base = _torch_conv_of(m)
        if (base is not None and id(m) not in seen and len(set(m.kernel_size)) == 1
                and m.kernel_size[0] in by_size):
            seen.add(id(m))
            out.append(m)
    return out


def weightable(model: nn.Module, kernel_size: int) -> int:
    """How many convs ``convert(model, {kernel_size: α})`` would weight (0: α changes nothing in this model)."""
    return len(_would_weight(model, {kernel_size: None}))


def shape_init(model: nn.Module, alpha: Mapping[int, Coefficients] | float) -> nn.Module:
    """Multiply, in place, the weights of every conv ``convert`` would weight by its α's density Φ, elementwise.

    The density's shape at initialisation (V₀ = Φ ∘ W₀, what a weighted conv applies before its first step)
    on a standard conv that then trains as usual: a control that tells how much of a weighted model's gain
    comes from where Φ puts the initial weights (``scale_init`` keeps only their overall scale). Run it on
    freshly initialised weights, before any training.
    """
    by_size = _as_mapping(alpha)
    with torch.no_grad():
        for m in _would_weight(model, by_size):
            phi = density(m.kernel_size, by_size[m.kernel_size[0]], dtype=m.weight.dtype, device=m.weight.device)
            m.weight.mul_(phi)
    return model


LR_SHAPE_OPTIMIZERS = ("sgd", "adam")
"""The optimisers ``LRShape``'s derivation covers (Adam only without weight decay)."""


def lr_shape_problem(optimizer: str, weight_decay: float, learnable_alpha: bool = False) -> Optional[str]:
    """Why a per-position learning rate Φ cannot stand for a weighted conv under this optimiser, or None.

    Covered: SGD (momentum, dampening, Nesterov, weight decay), exactly; Adam without weight decay, up to ε.
    Not covered: Adam with weight decay (its L2 term λW = λV/Φ is not what torch adds, λV), learnable α (Φ
    changes while training) and any other optimiser."""
    if optimizer not in LR_SHAPE_OPTIMIZERS:
        return (f"lr-shape: the derivation covers {' and '.join(LR_SHAPE_OPTIMIZERS)}, not optimizer "
                f"{optimizer!r}")
    if optimizer == "adam" and weight_decay:
        return (f"lr-shape: under Adam the derivation holds without weight decay only (weight_decay is "
                f"{weight_decay:g}); set training.weight_decay: 0 or use sgd")
    if learnable_alpha:
        return "lr-shape: the derivation needs a fixed Φ; training.learnable_alpha trains α"
    return None


class LRShape:
    """A standard conv trained with the per-position learning rate of a weighted one: what a training step
    (``wconv.train``) turns on for the lr-shape control, in place of ``optimizer.step()``.

    Why it is the weighted conv's learning rate. A weighted conv applies V = Φ ∘ W and its gradient is
    ∇W = Φ ∘ ∇V (∇V: the loss's gradient with respect to the kernel applied).

    - SGD, momentum μ, dampening τ, weight decay λ, learning rate η (any schedule): on W,
      g = ∇W + λW, b ← μb + (1 − τ)g, W ← W − η b (Nesterov: W ← W − η (g + μb)). Φ is fixed, so multiplying
      every line by Φ gives, with b' = Φ ∘ b and g' = Φ ∘ g = Φ² ∘ ∇V + λV:
      b' ← μb' + (1 − τ)g', V ← V − η b' (Nesterov: V ← V − η (g' + μb')). That is SGD on V whose *loss*
      gradient is multiplied by Φ² and whose decay term is the usual λV: a standard conv starting at V₀ and
      stepping with Φ² ∘ ∇V is the weighted conv, exactly (up to rounding). So ``step`` multiplies the
      gradients by Φ² *before* ``optimizer.step()``, which then adds λV itself.
    - Adam without weight decay (β₁, β₂, ε): on W, m ← β₁m + (1 − β₁)∇W, v ← β₂v + (1 − β₂)∇W²,
      W ← W − η m̂ / (√v̂ + ε). With ∇W = Φ ∘ ∇V, Adam's m and √v on W are Φ ∘ (m, √v on V), so
      V ← V − η Φ ∘ m̂_V / (√v̂_V + ε / Φ): Adam on V with its step multiplied by Φ, and ε replaced by ε/Φ.
      ``step`` runs Adam on the unscaled gradient and multiplies its step by Φ: exact but for ε (ε/Φ
      instead of ε, negligible unless √v̂ is as small as ε). With weight decay (L2 in the gradient,
      ∇W + λW = Φ ∘ ∇V + λV/Φ) Adam's normalisation does not factor: not covered (``lr_shape_problem``).

    With init ``shape_init`` (V₀ = Φ ∘ W₀), SGD and this, the standard conv *is* the weighted conv;
    ``LRShape`` alone is the per-position learning rate without the density's initial shape. The convs are
    those ``convert`` would weight; ``alpha=None`` holds none (``step`` is ``optimizer.step()``). The
    product is one ``torch._foreach_mul_`` of the gradients (SGD), or three multi-tensor operators around
    the step (Adam); Φ is broadcast to each weight's shape and strides once and kept.
    """

    def __init__(self, model: nn.Module, alpha: Optional[Mapping[int, Coefficients]], optimizer: str = "sgd"):
        if optimizer not in LR_SHAPE_OPTIMIZERS:
            raise ValueError(lr_shape_problem(optimizer, 0.0))
        self.optimizer = optimizer
        by_size = {} if alpha is None else _as_mapping(alpha)
        convs = _would_weight(model, by_size)
        power = 2 if optimizer == "sgd" else 1
        self.weights = [m.weight for m in convs]
        self._phis = [self._like(m.weight, density(m.kernel_size, by_size[m.kernel_size[0]], dtype=torch.float64)
                                 ** power) for m in convs]

    @staticmethod
    def _like(weight: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.empty_like(weight).copy_(phi.to(weight.dtype).expand_as(weight))

    def __bool__(self) -> bool:
        return bool(self.weights)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` with the convs' per-position learning rate Φ² (SGD: on the loss gradient) or
        Φ (Adam: on the step)."""
        if not self.weights:
            optimizer.step()
            return
        pairs = [(w, phi) for w, phi in zip(self.weights, self._phis) if w.grad is not None]
        if self.optimizer == "sgd":
            if pairs:
                torch._foreach_mul_([w.grad for w, _ in pairs], [phi for _, phi in pairs])
            optimizer.step()
            return
        with torch.no_grad():
            ws = [w for w, _ in pairs]
            before = torch._foreach_mul(ws, 1.0) if ws else []  # copies
            optimizer.step()
            if ws:
                steps = torch._foreach_sub(ws, before)
                torch._foreach_mul_(steps, [phi for _, phi in pairs])
                torch._foreach_add_(before, steps)
                torch._foreach_copy_(ws, before)


def fuse(model: nn.Module) -> nn.Module:
    """Replace every weighted conv by a plain torch conv with weight ``weight ∘ Φ``: same outputs, no overhead."""

    def swap(m: nn.Module):
        if not isinstance(m, _WeightedConv):
            return None
        new = _twin(m, _TORCH_OF[type(m)])
        new.weight = nn.Parameter(m.effective_weight().detach().clone(), requires_grad=m.weight.requires_grad)
        new.bias = m.bias
        return new

    return _replace(model, swap)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser groups that keep learnable density coefficients out of weight decay."""
    density_ids = {id(m.log_alpha) for m in model.modules() if isinstance(m, _WeightedConv) and m.log_alpha is not None}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in density_ids], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in density_ids], "weight_decay": 0.0},
    ]


class _MultiplyEach(torch.autograd.Function):
    """``(n, W_1…W_n, Φ_1…Φ_n) → (W_1 ∘ Φ_1, …, W_n ∘ Φ_n)`` in one multi-tensor product; backward
    ``∇W_i = Φ_i ∘ ∇(W_i ∘ Φ_i)`` in one. (torch's own autograd for ``_foreach_mul`` calls one ``mul`` per
    tensor in its backward.) The Φ_i are constants with the weights' shapes."""

    @staticmethod
    def forward(ctx, n: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.n = n
        ctx.save_for_backward(*tensors[n:])
        ctx.set_materialize_grads(False)  # an unused conv's output gets None, not zeros
        return tuple(torch._foreach_mul(tensors[:n], tensors[n:]))

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):
        phis = ctx.saved_tensors
        used = [i for i, g in enumerate(grads) if g is not None]
        out: list[Optional[torch.Tensor]] = [None] * ctx.n
        if used:
            products = torch._foreach_mul([grads[i] for i in used], [phis[i] for i in used])
            for i, g in zip(used, products):
                out[i] = g
        return (None, *out, *([None] * ctx.n))


class DensityStep:
    """Φ applied once per step to every weighted conv of ``model`` with a fixed α (the multi-tensor form).

    ``weights()`` gives ``{"<conv>.weight": W ∘ Φ}`` for all of them in one ``torch._foreach_mul`` (the Φ
    broadcast to the weights' shapes and strides once, then kept), differentiable in W: the backward is one
    ``_foreach_mul`` too. Inside ``applied()`` the convs take their ``weight`` as already weighted, so the model
    is run with those weights substituted (``forward``, or ``torch.func.functional_call`` on stacked weights).
    Learnable-α convs are left to their own forward: their Φ is recomputed from α at every call anyway.
    ``DensityStep(model, once=False)`` holds no conv: every conv computes ``weight ∘ Φ`` itself, the reference.
    """

    def __init__(self, model: nn.Module, *, once: bool = True) -> None:
        self.model = model
        self.convs = {f"{name}.weight" if name else "weight": m for name, m in model.named_modules()
                      if once and isinstance(m, _WeightedConv) and m.log_alpha is None}
        self._broadcast: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def _phi_like(self, name: str, phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Φ (with any leading stacked dimensions of a fused group) broadcast to ``weight``'s shape, strides
        and dtype; computed again only when Φ is another tensor or was changed, or the weight's layout changed."""
        kept = self._broadcast.get(name)
        if (kept is not None and kept[0] is phi and kept[1] == phi._version and kept[2].shape == weight.shape
                and kept[2].dtype == weight.dtype and kept[2].stride() == weight.stride()
                and kept[2].device == weight.device):
            return kept[2]
        lead = phi.dim() - len(self.convs[name].kernel_size)  # stacked: Φ (K, k, k), weight (K, out, in, k, k)
        with torch.no_grad():
            full = torch.empty_like(weight).copy_(phi.reshape(*phi.shape[:lead], 1, 1, *phi.shape[lead:]))
        self._broadcast[name] = (phi, phi._version, full)
        return full

    def weights(self, params: Optional[Mapping[str, torch.Tensor]] = None,
                buffers: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """``W ∘ Φ`` of every conv, keyed by its weight's name, in one product: of the model's own tensors,
        or of ``params`` and ``buffers`` (names as in the model; e.g. a fused group's stacked ones)."""
        if not self.convs:
            return {}
        names = list(self.convs)
        if params is None:
            ws = [m.weight for m in self.convs.values()]
            phis = [m.density for m in self.convs.values()]
        else:
            ws = [params[n] for n in names]
            phis = [buffers[n.removesuffix("weight") + "density"] for n in names]
        phis = [self._phi_like(n, phi, w) for n, phi, w in zip(names, phis, ws)]
        return dict(zip(names, _MultiplyEach.apply(len(ws), *ws, *phis)))

    @contextmanager
    def applied(self):
        """While open, the convs take ``weight`` as ``W ∘ Φ``: run the model only with ``weights()`` substituted."""
        for m in self.convs.values():
            m.weight_is_effective = True
        try:
            yield self
        finally:
            for m in self.convs.values():
                m.weight_is_effective = False

    def forward(self, weights: Mapping[str, torch.Tensor], *args, **kwargs):
        """The model on ``args`` with ``weights`` (``weights()``) in place of the convs' weights, inside
        ``applied()``."""
        # tie_weights=False: a tensor tied to a weighted conv's weight elsewhere keeps W, not W ∘ Φ.
        return functional_call(self.model, dict(weights), args, kwargs, tie_weights=False)
