"""Fused α-trials: K trials of one cell trained as one model (horizontal fusion; HFTA, Wang et al., MLSys 2021).

The trials of a cell share the architecture, the seed — hence the initial weights — and the data order,
batch for batch (``wconv.train.build_model``, ``wconv.data.split``); they differ only in the density Φ.
``run_group`` trains K of them at once: every batch is read and augmented once, and each layer runs once
for all K members, so a small model fills a GPU that one trial leaves mostly idle.

Why ``torch.func`` (``stack_module_state`` + ``functional_call`` under ``vmap``) rather than a K-wide rewrite
---------------------------------------------------------------------------------------------------------
- It trains every registered model unchanged. A rewrite needs a K-wide twin of every layer type (grouped
  Conv1d/2d/3d, BatchNorm over K·C channels, batched Linear, LayerNorm per group, gMLP's spatial gating,
  the SNN's gates) and a test for each; vmap's batching rules do that rewrite per operation: a conv with
  stacked weights and a shared input becomes one conv with K·C_out channels, with stacked inputs one
  grouped conv (groups = K).
- Members stay independent. The step minimises the sum of the member losses, which share no parameter,
  so each member's gradient is its own. BatchNorm's buffers are stacked like the weights: batch statistics
  and running statistics are per member (in-place updates land in each member's slice). Dropout uses
  ``randomness="same"``: every member draws the mask that a lone trial with the same seed draws.
- The optimiser is torch's own over the stacked parameters. SGD (momentum, weight decay), Adam (moments)
  and the cosine schedule are elementwise and step together, so each member's slice gets exactly the
  update it gets alone; learnable α (``log_alpha``) is stacked like any parameter and kept out of weight
  decay as ``wconv.param_groups`` does. Dropping a member slices parameters, buffers and optimiser state.
- Φ once per step: every fixed-Φ conv's stacked weight is multiplied by its members' stacked Φ in one
  multi-tensor product before the vmapped forward, and its gradient in one after the backward
  (``wconv.conv.DensityStep``), instead of a product per conv inside the forward and another in the backward.
- The cost of generality: the batching rules pick generic kernels (the stacked 5-D weights are not
  channels_last); ``benchmarks/gpu.py`` measures what fusion gains per member.

Each member is the trial ``run_trial`` runs with its α and the cell's seed: the same reports (plus
``member`` and ``alpha``), the same early stopping, and — when it ends — a ``trial.pt`` in its own folder in
``run_trial``'s format, so ``resume_trial`` on that folder hands its result back like any finished trial.
The group's own checkpoint (``group.pt``, every epoch, atomic) resumes the group exactly.

How a sweep drives fused groups (``resources.group_size``; ``launch/search.py`` and ``launch/runner.py``)
---------------------------------------------------------------------------------------------------------
- The cell's searcher claims up to K trials at once, in one store transaction: an orphaned group whole, else
  the baseline α = 1 as member 0 of the cell's first group, then α from the cell's Optuna study asked up to K
  times (TPE with ``constant_liar=True`` keeps the K proposals apart). The last group may be smaller.
- One group is one Tune trial on one trial's resources: a function trainable calls ``run_group``; the group's
  folder ``group-<its first member's trial key>`` holds ``group.pt`` beside one folder per member (the trial key a
  lone trial of that α has), and the store keeps one row per member, with its ``group_id`` and ``member``.
- ``report(metrics, member_dir)`` is called for each member; the trainable passes the reports of an epoch to Tune
  together (``epoch_end``), and the store callback writes each member's epoch and status as a lone trial's.
- The scheduler decides per member, inside the group: ``report`` returns None to continue a member or a
  one-line reason to stop it. ASHA's decision (``launch.search.MemberASHA``) uses Ray's own rung bookkeeping,
  filled with the cell's rung values from the store (every member's and every lone trial's per-epoch rows). The
  stopped member ends ``stopped``, the others go on with K − 1; a member that ends (budget, patience,
  non-finite loss, stopped) never disturbs the rest. The searcher tells the study each member's end as it happens.
- A killed group is claimed back whole and restarts from ``group.pt`` (its first report per member replays the
  earlier epochs, as ``run_trial``'s does); members that had ended report their results again.
- A confirmation (``wconv confirm``) fuses the arms of one seed: α, α = 1 and the initialisation controls
  (members may differ in ``init_scale`` and ``init_shape``, applied when each member is built); the lr-shape arm
  trains alone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.func import functional_call, stack_module_state, vmap

from wconv.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, trial_checkpoint
from wconv.conv import DensityStep, convert, param_groups
from wconv.result import (
    ALPHA,
    COMPLETED,
    EPOCH,
    LR,
    MEMBER,
    STOPPED,
    TEST,
    TRAIN_LOSS,
    VAL,
    VAL_LOSS,
    FinalReport,
    Progress,
    TrialStatus,
    constant_keys,
)
from wconv.train import (
    CHECKPOINT,
    Task,
    TrialConfig,
    as_model_dtype,
    autocast_for,
    build_model,
    compile_for,
    load_data,
    make_optimizer,
    pick_device,
)

GROUP_CHECKPOINT = "group.pt"
MemberReport = Callable[[dict, Path], Optional[str]]
"""``report(metrics, member_dir)`` after each epoch of each member (``EpochReport`` plus ``member`` and
``alpha``; the last one a ``FinalReport``). Return None to go on, or a one-line reason to stop the member."""


_MAY_DIFFER = {"alpha": None, "baseline": False, "init_scale": None, "init_shape": None}
"""What a group's members may differ in: the density and what is applied once, when the model is built."""


def check_group(members: Sequence[TrialConfig]) -> None:
    """ValueError unless ``members`` can train as one group: the same trial but for α, the baseline flag and the
    initialisation controls (``init_scale``, ``init_shape``), each member distinct, no lr-shape member (its
    per-position learning rate needs an optimiser of its own), and no standard-conv member when α is learnable."""
    if not members:
        raise ValueError("a fused group needs at least one member")
    first = replace(members[0], **_MAY_DIFFER)
    for i, m in enumerate(members):
        if replace(m, **_MAY_DIFFER) != first:
            raise ValueError(f"member {i}: a fused group's members may differ only in alpha, baseline, init_scale and "
                             f"init_shape (model, dataset, kernel size, seed, training and options must be equal)")
    if members[0].lr_shape is not None:
        raise ValueError("lr_shape: a fused group steps its members with one optimiser; run an lr-shape trial alone "
                         "with run_trial")
    kinds = [(m.alpha, m.init_scale, m.init_shape) for m in members]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"a fused group's members need distinct alpha (or initialisation controls), got "
                         f"{[m.alpha for m in members]}")
    if members[0].training.learnable_alpha and None in [m.alpha for m in members]:
        raise ValueError("training.learnable_alpha: the baseline (alpha None) cannot join a learnable-α group; "
                         "run it alone with run_trial")


def _member_model(config: TrialConfig, data, device: torch.device) -> torch.nn.Module:
    """A member's model, built and initialised as its lone trial builds it (seed, α, the initialisation
    controls); a standard-conv member's convs are then weighted with Φ = 1 (``weight * 1`` is ``weight`` exactly),
    so that every member has the same modules."""
    model = build_model(config, data, device)
    if config.alpha is None:
        convert(model, {config.kernel_size: None})
    return model


def _slice_state(state: dict, index) -> dict:
    """An optimiser ``state_dict`` cut to the members at ``index`` (an int: one member, unstacked)."""
    return {"state": {p: {k: v[index].clone() if torch.is_tensor(v) and v.dim() > 0 else v
                          for k, v in st.items()} for p, st in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


class Group:
    """The state of a fused group: stacked parameters and buffers of its running members, their optimiser,
    LR schedule and data order, and each member's ``Progress``; the steps of ``run_group``."""

    def __init__(self, members: Sequence[TrialConfig], checkpoint_dir: Path, member_dirs: Sequence[Path], data=None):
        check_group(members)
        self.members, self.member_dirs = list(members), list(member_dirs)
        self.training = tc = members[0].training
        self.device = pick_device()
        self.checkpoint = checkpoint_dir / GROUP_CHECKPOINT
        self.data = load_data(members[0], self.device) if data is None else data
        self.task = Task(self.data.task, tc, self.data.num_classes, self.device)
        # Each build re-seeds the global RNGs, so they end as after one trial's build (dropout draws next).
        modules = [_member_model(m, self.data, self.device) for m in members]
        template = modules[0]
        self.dtype = next(template.parameters()).dtype
        self.state_keys = list(template.state_dict())
        names = {id(p): n for n, p in template.named_parameters()}
        self.param_groups = [([names[id(p)] for p in g["params"]], g["weight_decay"])
                             for g in param_groups(template, tc.weight_decay)]
        self.params, self.buffers = stack_module_state(modules)
        self.base = copy.deepcopy(template).to("meta")
        self.density = DensityStep(self.base)
        """Φ once per step for every member and conv: one product of the stacked weights (``wconv.conv``)."""
        self.optimizer, self.scheduler = make_optimizer(self._groups(), tc)
        self.order = torch.Generator().manual_seed(members[0].seed)
        self.active = list(range(len(members)))
        """Members still training, in the order of the stacked tensors."""
        self.progress = [Progress() for _ in members]
        self.epoch, self.elapsed = 0, 0.0
        self.about = [dict(constant_keys(self.device, m.baseline),
                           **{MEMBER: i, ALPHA: None if m.alpha is None else list(m.alpha)})
                      for i, m in enumerate(members)]
        self.losses, self.outputs = compile_for(self._losses, tc), compile_for(self._outputs, tc)

    def _weighted(self, params: dict, buffers: dict) -> dict:
        """``params`` with every fixed-Φ conv's stacked weight replaced by ``W ∘ Φ``; run the base with them
        inside ``density.applied()``."""
        return {**params, **self.density.weights(params, buffers)}

    def _groups(self) -> list[dict]:
        return [{"params": [self.params[n] for n in names], "weight_decay": wd} for names, wd in self.param_groups]

    def _losses(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(members,) training losses of one shared batch."""
        def one(p, b):
            return self.task.loss_of(functional_call(self.base, (p, b), (x,)), y)
        return vmap(one, randomness="same")(params, buffers)

    def _outputs(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        """(members, N, ...) outputs for one shared batch."""
        return vmap(lambda p, b: functional_call(self.base, (p, b), (x,)), randomness="same")(params, buffers)

    def autocast(self):
        return autocast_for(self.device, self.training)

    # ------------------------------------------------------------ the steps

    def train_epoch(self) -> list[float]:
        """One epoch of fused optimiser steps and the LR scheduler's step; each running member's mean loss."""
        tc = self.training
        self.base.train()
        totals, n = torch.zeros(len(self.active), device=self.device), 0
        with self.density.applied():
            for step, (x, y) in enumerate(self.data.train.batches(tc.batch_size, self.order)):
                if tc.max_steps_per_epoch is not None and step >= tc.max_steps_per_epoch:
                    break
                x, y = as_model_dtype(x, y, self.dtype)
                with self.autocast():
                    losses = self.losses(self._weighted(self.params, self.buffers), self.buffers, x, y)
                self.optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()  # members share no parameter: each gets its own gradient
                self.optimizer.step()
                totals += losses.detach() * len(x)  # summed on the device: no host sync per step
                n += len(x)
        self.scheduler.step()
        return [t / max(n, 1) for t in totals.tolist()]

    def evaluate(self, params: dict, buffers: dict, split, prefix: str, final: bool = False) -> list[dict]:
        self.base.eval()
        count = len(next(iter(params.values())))
        with torch.no_grad():
            weighted = self._weighted(params, buffers)  # once for the whole split: the weights do not change
        with self.density.applied():
            return self.task.evaluate(lambda x: self.outputs(weighted, buffers, x), count, split,
                                      self.training.batch_size, self.autocast, self.dtype, prefix, final)

    def validate(self) -> list[dict]:
        return self.evaluate(self.params, self.buffers, self.data.val, VAL)

    def test(self, ending: list[int]) -> dict[int, dict]:
        """The test metrics of the best-epoch models of members ``ending``, in one fused pass."""
        if not ending:
            return {}
        states = [self.progress[i].best_model for i in ending]
        positions = [self.active.index(i) for i in ending]
        params = {n: torch.stack([s[n] for s in states]) for n in self.params}
        # Non-persistent buffers (a fixed Φ) are not in a state dict; they never change.
        buffers = {n: torch.stack([s[n] if n in s else b[pos] for s, pos in zip(states, positions)])
                   for n, b in self.buffers.items()}
        return dict(zip(ending, self.evaluate(params, buffers, self.data.test, TEST, final=True)))

    def member_state(self, position: int) -> dict:
        """The ``state_dict`` of the member at ``position`` of the stack, as its lone model would have it."""
        tensors = {**self.params, **self.buffers}
        return {k: tensors[k][position].detach().clone() for k in self.state_keys}

    # ------------------------------------------------------------ members ending

    def end(self, ending: dict[int, tuple[TrialStatus, str]], reports: dict[int, dict]) -> None:
        """Finish members ``ending`` (index → status, reason): their final reports and ``trial.pt``; then
        the group goes on without them, and is checkpointed."""
        tests = self.test([i for i, (status, _) in ending.items() if status == COMPLETED])
        for i, (status, reason) in ending.items():
            self.progress[i].finish(reports[i], status, reason, tests.get(i, {}), self.task.settings)
            self._save_member(i, status)
        self._keep([pos for pos, i in enumerate(self.active) if i not in ending])
        self.save()

    def _save_member(self, i: int, status: TrialStatus) -> None:
        """The member's ``trial.pt`` as ``run_trial`` leaves it when it ends (best model if completed)."""
        pos = self.active.index(i)
        p = self.progress[i]
        model = p.best_model if status == COMPLETED else self.member_state(pos)
        save_checkpoint(trial_checkpoint(model, _slice_state(self.optimizer.state_dict(), pos),
                                         self.scheduler.state_dict(), self.order, p, self.members[i]),
                        self.member_dirs[i] / CHECKPOINT)

    def _keep(self, positions: list[int]) -> None:
        """Go on with the members at ``positions`` of the stack: slice parameters, buffers and optimiser state."""
        if positions == list(range(len(self.active))):
            return
        index = torch.tensor(positions, dtype=torch.long, device=self.device)
        optimizer, scheduler = self.optimizer.state_dict(), self.scheduler.state_dict()
        self.params = {n: p.detach()[index].clone().requires_grad_(p.requires_grad) for n, p in self.params.items()}
        self.buffers = {n: b[index].clone() for n, b in self.buffers.items()}
        self.optimizer, self.scheduler = make_optimizer(self._groups(), self.training)
        # The scheduler's constructor resets the groups' lr; the optimiser's state dict brings it back.
        self.scheduler.load_state_dict(scheduler)
        self.optimizer.load_state_dict(_slice_state(optimizer, index))
        self.active = [self.active[pos] for pos in positions]

    # ------------------------------------------------------------ checkpoint

    def save(self) -> None:
        save_checkpoint({"active": self.active, "epoch": self.epoch, "elapsed": self.elapsed,
                         "params": {n: p.detach() for n, p in self.params.items()}, "buffers": self.buffers,
                         "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                         "order": self.order.get_state(), "rng": rng_state(),
                         "progress": [vars(p) for p in self.progress],
                         "members": [asdict(m) for m in self.members]}, self.checkpoint)

    def restore(self) -> None:
        """Continue from ``group.pt``, if there is one."""
        if not self.checkpoint.exists():
            return
        saved = load_checkpoint(self.checkpoint, map_location=self.device)
        if [_what(m) for m in saved["members"]] != [_what(asdict(m)) for m in self.members]:
            raise ValueError(f"{self.checkpoint}: holds the checkpoint of another group; give this group "
                             f"its own folder or delete that file")
        self._keep([self.active.index(i) for i in saved["active"]])
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(saved["params"][n])
            for n, b in self.buffers.items():
                b.copy_(saved["buffers"][n])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.order.set_state(saved["order"])
        set_rng_state(saved["rng"])
        self.progress = [Progress(**p) for p in saved["progress"]]
        self.epoch, self.elapsed = saved["epoch"], saved["elapsed"]


def _what(member: dict) -> dict:
    """What a member trains, from its ``asdict``: all but where its data lives (a resumed sweep may find the same
    dataset under another root, as a lone trial may)."""
    return {k: v for k, v in member.items() if k != "dataset_root"}


def run_group(members: Sequence[TrialConfig], report: MemberReport, checkpoint_dir: Path | str,
              member_dirs: Optional[Sequence[Path | str]] = None,
              epoch_end: Optional[Callable[[], None]] = None) -> list[FinalReport]:
    """Train ``members`` — trials of one cell that differ only in α — as one fused model; return each
    member's ``FinalReport``, in order.

    Reports, early stopping and outcomes per member are ``run_trial``'s; ``report`` may also stop a
    member (see ``MemberReport``), which ends as ``trial_status="stopped"`` with its best epoch's ``val_*``.
    A member's ``wall_time_s`` is the group's: the time it shared the device for. The group checkpoints
    to ``checkpoint_dir/group.pt`` every epoch and continues from it exactly; members report to, and leave
    their ``trial.pt`` in, ``member_dirs`` (default ``checkpoint_dir/member-<i>``). ``epoch_end()``, if given, is
    called once the members' reports of an epoch (and those handed back after a restart) have all been made: a
    caller can pass them on together.
    """
    checkpoint_dir = Path(checkpoint_dir)
    dirs = [Path(d) for d in member_dirs] if member_dirs is not None else [
        checkpoint_dir / f"member-{i}" for i in range(len(members))]
    if len(dirs) != len(members):
        raise ValueError(f"{len(members)} members but {len(dirs)} member_dirs")
    for d in (checkpoint_dir, *dirs):
        d.mkdir(parents=True, exist_ok=True)
    started = time.time()
    group = Group(members, checkpoint_dir, dirs)
    group.restore()
    replay = {i: [dict(m) for m in p.history] for i, p in enumerate(group.progress)}
    for i, p in enumerate(group.progress):
        if p.result is not None:  # ended before the restart: hand its result to the caller again
            report(dict(p.result, replay=replay.pop(i)), dirs[i])
    if epoch_end is not None:
        epoch_end()
    elapsed0 = group.elapsed
    while group.active:
        reports, ending = _epoch(group, lambda: elapsed0 + time.time() - started)
        group.end(ending, reports)
        stops = {}
        for i in reports:
            result = group.progress[i].result if i in ending else reports[i]
            earlier = replay.pop(i, [])
            decision = report(dict(result, replay=earlier) if earlier else result, dirs[i])
            if decision and i not in ending:
                stops[i] = (STOPPED, str(decision))
        if stops:
            group.end(stops, reports)
            for i in stops:
                report(group.progress[i].result, dirs[i])
        if epoch_end is not None:
            epoch_end()
    return [p.result for p in group.progress]


def _epoch(group: Group, elapsed: Callable[[], float]) -> tuple[dict[int, dict], dict[int, tuple[TrialStatus, str]]]:
    """Train and validate one epoch of the running members: their reports and which of them end.
    ``elapsed()`` is the group's time so far, over all restarts."""
    epoch = group.epoch + 1
    train_losses = group.train_epoch()
    lr = group.scheduler.get_last_lr()[0]
    finite = [math.isfinite(loss) for loss in train_losses]
    validation = group.validate() if any(finite) else []
    group.epoch, group.elapsed = epoch, elapsed()
    reports, ending = {}, {}
    for pos, i in enumerate(group.active):
        p = group.progress[i]
        metrics = {EPOCH: epoch, TRAIN_LOSS: train_losses[pos], LR: lr}
        if finite[pos]:  # a member whose training loss is not finite fails without validation, as alone
            metrics.update(validation[pos])
            if math.isfinite(metrics[VAL_LOSS]):
                p.record(metrics, lambda pos=pos: group.member_state(pos))
        status, reason = p.outcome(metrics, group.training, group.members[i].baseline)
        p.epoch, p.elapsed = epoch, group.elapsed
        p.history.append(metrics)
        reports[i] = dict(metrics, **group.about[i], wall_time_s=p.elapsed)
        if status is not None:
            ending[i] = (status, reason)
    return reports, ending
