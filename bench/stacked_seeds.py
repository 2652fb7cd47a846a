"""Several seeds of one architecture as one model: every convolution grouped by seed, every BatchNorm over all
the seeds' channels, so one forward and backward pass trains N independent models.

Seed ``n`` owns channels ``[n * C, (n + 1) * C)`` of every layer: a convolution of ``groups`` groups becomes one
of ``N * groups`` groups over ``N`` times the channels, whose weight is the seeds' weights concatenated; BatchNorm,
ReLU and pooling work per channel already. The input is ``(B, N, H, W)``, seed ``n``'s image in channel ``n``; the
output is ``(B, N, 10)`` log-probabilities. Summing the seeds' losses gives each seed's weights exactly its own
gradient, and SGD (momentum, weight decay) and weight averaging act element by element, so a stacked training is
the N separate trainings, up to the order in which the convolution kernels sum.

What it is for: small models leave a GPU waiting on per-operator overhead, and one operator over N seeds'
channels pays it once, so dozens of seeds share one device. Whether it pays on a CPU against one process per
seed (``consistency --jobs``) is what bench/bench_stacked.py measures. A benchmark, not part of the package: its
own loop over the seeds' batches mirrors the Trainer's step (augmentation included) without a teacher, compile
or resume.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch import nn

from tinymnist.data import MNIST
from tinymnist.errors import TrainingError, UsageError
from tinymnist.models import Net, create_model
from tinymnist.training.engine import (
    SCORE_PREFIX,
    WeightAverage,
    batch_inputs,
    batch_loss,
    evaluate,
    make_optimizer,
    model_inputs,
)
from tinymnist.training.placement import autocast, placement
from tinymnist.training.recipes import Options, Recipe
from tinymnist.training.schedule import lr_at

PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)


class StackedNet(nn.Module):
    """N models of one architecture, run as one: ``(B, N, H, W)`` in, ``(B, N, 10)`` log-probabilities out."""

    def __init__(self, body: nn.Sequential, seeds: int) -> None:
        super().__init__()
        self.body, self.seeds = body, seeds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x).flatten(1)
        return torch.log_softmax(out.view(len(out), self.seeds, -1), dim=2)


def stack(models: Sequence[nn.Module]) -> StackedNet:
    """One StackedNet holding ``models`` (one architecture, a ``Net`` of convolutions, BatchNorm, ReLU, pooling
    and dropout, as every built-in and ``tiny:`` model is), seed ``n`` = ``models[n]``."""
    if not models:
        raise UsageError("stack: no models were given; pass at least one.")
    first = models[0]
    if type(first) is not Net:
        raise UsageError(f"seeds at once stacks tinymnist's own layer stacks (built-in and tiny: models); "
                         f"{type(first).__name__} has its own forward. Train its seeds one by one.")
    shapes = [[tuple(v.shape) for v in m.state_dict().values()] for m in models]
    if any(type(m) is not type(first) or s != shapes[0] for m, s in zip(models, shapes, strict=True)):
        raise UsageError("stack: the models differ in their layers; seeds at once needs one architecture.")
    body = nn.Sequential(*(_stack_layer([list(m.children())[i] for m in models])
                           for i in range(len(list(first.children())))))
    return StackedNet(body, len(models))


def unstack(stacked: StackedNet, n: int) -> dict[str, torch.Tensor]:
    """Seed ``n``'s state dict, with the keys its own model has (load it into ``create_model(...)``)."""
    state = {}
    for key, value in stacked.body.state_dict().items():
        state[key] = value.detach().clone() if value.dim() == 0 else \
            value.detach().chunk(stacked.seeds, dim=0)[n].clone()
    return state


def _stack_layer(layers: list[nn.Module]) -> nn.Module:
    first, n = layers[0], len(layers)
    if isinstance(first, nn.Sequential):
        return nn.Sequential(*(_stack_layer([list(layer.children())[i] for layer in layers])
                               for i in range(len(list(first.children())))))
    if isinstance(first, nn.Conv2d):
        if first.padding_mode != "zeros":
            raise UsageError(f"seeds at once supports zero-padded convolutions only, not padding_mode="
                             f"{first.padding_mode!r}.")
        conv = nn.Conv2d(n * first.in_channels, n * first.out_channels, first.kernel_size, first.stride,
                         first.padding, first.dilation, n * first.groups, bias=first.bias is not None,
                         device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([layer.weight for layer in layers]))
            if first.bias is not None:
                conv.bias.copy_(torch.cat([layer.bias for layer in layers]))
        return conv
    if isinstance(first, nn.BatchNorm2d):
        bn = nn.BatchNorm2d(n * first.num_features, first.eps, first.momentum, first.affine,
                            first.track_running_stats, device=first.weight.device if first.affine else None)
        state = {k: v if v.dim() == 0 else torch.cat([layer.state_dict()[k] for layer in layers])
                 for k, v in first.state_dict().items()}
        bn.load_state_dict(state)
        return bn
    if isinstance(first, PER_CHANNEL):
        return copy.deepcopy(first)
    raise UsageError(f"seeds at once does not know how to stack a {type(first).__name__} layer; it stacks "
                     f"Conv2d, BatchNorm2d, ReLU, pooling and dropout. Train this model's seeds one by one.")


class StackedTrainer:
    """Several seeds of one recipe trained together as one stacked model, in memory (no run record, checkpoint
    or resume: those are the Trainer's). Seed ``s`` starts from the weights its own Trainer would build and
    draws its batches and augmentation from the same generators, so each seed is the run ``tinymnist train``
    makes of it, up to the order in which the convolutions sum. ``recipe.seed`` is not used."""

    def __init__(self, recipe: Recipe, data: MNIST, seeds: Sequence[int], options: Options = Options(),
                 held_out: str = "test") -> None:
        recipe.check(train_size=len(data.train_labels))
        if len(set(seeds)) != len(seeds) or not seeds:
            raise UsageError(f"seeds at once needs one or more different seeds, not {list(seeds)}.")
        self.recipe, self.seeds = recipe, list(seeds)
        self.device, self.memory_format, self.precision = placement(options)
        models = []
        for seed in self.seeds:
            torch.manual_seed(seed)  # as the Trainer: the initial weights come from the seed alone
            models.append(create_model(recipe.model))
        self.model = stack(models).to(self.device, memory_format=self.memory_format)
        self.optimizer = make_optimizer(recipe, self.model)
        self.average = WeightAverage(self.model, recipe.ema) if recipe.ema else None
        self.shuffle_gens = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        self.augment_gens = [torch.Generator(device=self.device).manual_seed(seed + 1) for seed in self.seeds]
        self.mean, self.std = data.mean, data.std
        self.train_images, self.train_labels = data.train_images.to(self.device), data.train_labels.to(self.device)
        self.held_out_images = data.held_out_images.to(self.device)
        self.held_out_labels = data.held_out_labels.to(self.device)
        self.score_prefix = SCORE_PREFIX[held_out]
        self.history: list[list[dict]] = []  # per epoch, one metrics dict per seed

    def seed_model(self, k: int) -> nn.Module:
        """Seed ``self.seeds[k]``'s model as its own Trainer would save it (the average, when kept)."""
        model = create_model(self.recipe.model).to(self.device, memory_format=self.memory_format)
        model.load_state_dict(unstack(self.average.model if self.average else self.model, k))
        return model

    def train_epoch(self) -> list[dict]:
        """Train one epoch of every seed; per seed: train loss, train accuracy, lr."""
        r, epoch, n, size = self.recipe, len(self.history), len(self.train_labels), self.recipe.batch_size
        self.model.train()
        orders = [torch.randperm(n, generator=g).to(self.device) for g in self.shuffle_gens]
        batches = -(-n // size)
        augmented = r.augmented
        losses = torch.zeros(batches, len(self.seeds), device=self.device)
        correct = torch.zeros(len(self.seeds), dtype=torch.long, device=self.device)
        for b in range(batches):
            lr = lr_at(r, epoch, b, batches)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            rows = [order[b * size:(b + 1) * size] for order in orders]
            x = torch.cat([batch_inputs(self.train_images[i], self.mean, self.std, self.memory_format,
                                        (r, g) if augmented else None) for i, g in zip(rows, self.augment_gens,
                                                                                       strict=True)], dim=1)
            y = torch.stack([self.train_labels[i] for i in rows], dim=1)
            with autocast(self.device, self.precision):
                out = self.model(x.contiguous(memory_format=self.memory_format))
            per_seed = torch.stack([batch_loss(out[:, k], y[:, k], r.label_smoothing)
                                    for k in range(len(self.seeds))])
            self.optimizer.zero_grad(set_to_none=True)
            per_seed.sum().backward()  # each seed's weights get exactly their own loss's gradient
            self.optimizer.step()
            if self.average:
                self.average.update()
            losses[b] = per_seed.detach()
            correct += (out.argmax(2) == y).sum(0)
        finite = torch.isfinite(losses).all(0).tolist()
        if not all(finite):
            bad = [seed for seed, ok in zip(self.seeds, finite, strict=True) if not ok]
            raise TrainingError(f"the loss became non-finite at epoch {epoch + 1} for seed(s) {bad} (try a lower "
                                f"--lr).")
        sizes = torch.full((batches, 1), float(size), device=self.device)
        sizes[-1] = n - (batches - 1) * size
        train_loss = (losses * sizes).sum(0) / n
        return [{"train_loss": float(train_loss[k]), "train_acc": 100 * int(correct[k]) / n, "lr": lr}
                for k in range(len(self.seeds))]

    def run_epoch(self) -> list[dict]:
        """One epoch of every seed, each evaluated with the shared evaluation; one metrics dict per seed (the
        seconds are the stacked epoch's, for all the seeds together)."""
        start = time.perf_counter()
        train = self.train_epoch()
        inputs, p = model_inputs(self.mean, self.std, self.memory_format), self.score_prefix
        metrics = []
        for k, seed_train in enumerate(train):
            result = evaluate(self.seed_model(k), self.held_out_images, self.held_out_labels, inputs,
                              lambda: autocast(self.device, self.precision))
            metrics.append({"epoch": len(self.history) + 1, "seed": self.seeds[k], **seed_train,
                            f"{p}_loss": result.loss, f"{p}_acc": result.acc})
        seconds = time.perf_counter() - start
        for m in metrics:
            m["seconds"] = seconds
        self.history.append(metrics)
        return metrics
