"""Training and evaluation: the Trainer (one run's model, optimizer, generators and history) and the one
``evaluate``. Prints nothing, owns no files: executor.execute drives a Trainer and hands its events to sinks.

The training set is held on the device as one uint8 tensor, shuffled every epoch with a dedicated
generator and sliced into batches; augmentation (when the recipe asks for it) is batched and per-sample.
All random state lives in two generators (shuffle, augment) plus the model's initial weights, so a run
is reproduced exactly from its seed, and resumed exactly from an epoch-end checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from tinymnist.data import MNIST, augment, normalize
from tinymnist.errors import TinyMnistError, TrainingError, UsageError
from tinymnist.models import create_model, is_user_model
from tinymnist.training.placement import CompiledForward, autocast, placement, resolve_compile
from tinymnist.training.recipes import Recipe, RunSpec
from tinymnist.training.schedule import lr_at
from tinymnist.training.user_models import PROBE_IMAGES, model_failure, model_file, safe_memory_format

SCORE_PREFIX = {"test": "test", "validation": "val"}  # a metric's key names what it was measured on
EVAL_BATCH = 500  # images per evaluation forward: bounds the activations held at once


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (its whole floating-point
    state; counters are copied), updated after every optimizer step with decay min(ema, (1 + t) / (10 + t)) at
    step t: the warm-up keeps the first, random weights from dragging the average for thousands of steps."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False)
        live, mine = model.state_dict(), self.model.state_dict()  # views of the tensors, updated in place
        floats = [k for k in live if live[k].is_floating_point()]
        counters = [k for k in live if not live[k].is_floating_point()]
        self._mine, self._live = [mine[k] for k in floats], [live[k] for k in floats]  # built once: a per-step path
        self._mine_counters, self._live_counters = [mine[k] for k in counters], [live[k] for k in counters]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        weight = 1 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self._mine, self._live, weight)
        if self._mine_counters:
            torch._foreach_copy_(self._mine_counters, self._live_counters)


class Trainer:
    """One training run: model, optimizer, random generators and the history so far. ``spec`` says what is
    trained (recipe, options, normalization, model source, held-out kind); ``data`` holds the images it trains
    and scores on (already cut to the spec's sizes); ``teacher`` is the model a distilling recipe learns from
    (its caller loads it); ``build`` builds the model instead of the recipe's name (a notebook's own class)."""

    def __init__(self, spec: RunSpec, data: MNIST, *, teacher: Teacher | None = None,
                 build: Callable[[], nn.Module] | None = None) -> None:
        recipe = self.recipe = spec.recipe
        recipe.check(train_size=len(data.train_labels), model=build is None)
        if recipe.teacher and teacher is None:
            raise UsageError(f"the recipe distills from {recipe.teacher}, but no teacher model was given.")
        self.device, wanted_format, self.precision = placement(spec.options)
        self.mean, self.std = spec.normalization or (data.mean, data.std)
        self.train_images = data.train_images.to(self.device)
        self.train_labels = data.train_labels.to(self.device)
        torch.manual_seed(recipe.seed)  # the initial weights come from the seed alone
        model = (build() if build else create_model(recipe.model, spec.model_source)).to(self.device)
        self.user_file = model_file(recipe.model, spec.model_source, model, built=build is not None)
        built_in = build is None and not is_user_model(recipe.model)  # registered: layout-agnostic, tested
        self.memory_format = wanted_format if built_in else safe_memory_format(
            model, wanted_format, normalize(self.train_images[:PROBE_IMAGES], self.mean, self.std))
        self.model = model.to(memory_format=self.memory_format)
        self.optimizer = make_optimizer(recipe, self.model)
        self.average = WeightAverage(self.model, recipe.ema) if recipe.ema else None
        compile = resolve_compile(spec.options.compile, self.device, torch.get_num_threads(),
                                  len(data.train_labels) * recipe.epochs)
        self._forward = CompiledForward(self.model, compile, recipe.batch_size, recipe.model)
        self.shuffle_gen = torch.Generator().manual_seed(recipe.seed)
        self.augment_gen = torch.Generator(device=self.device).manual_seed(recipe.seed + 1)
        # never augmented: normalized once, on the device, in the model's layout
        self.held_out_inputs = batch_inputs(data.held_out_images.to(self.device), self.mean, self.std,
                                            self.memory_format)
        self.held_out_labels = data.held_out_labels.to(self.device)
        self.score_prefix = SCORE_PREFIX[spec.held_out]
        self.history: list[dict] = []
        self.teacher = teacher.placed(self.device, self.memory_format) if recipe.teacher else None

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return len(self.history)

    @property
    def saved_model(self) -> nn.Module:
        """The model each epoch is scored with and a run saves: the weight average when the recipe keeps one."""
        return self.average.model if self.average else self.model

    @property
    def compiled(self) -> bool:
        """Whether the training step runs through torch.compile (placement.CompiledForward.compiled)."""
        return self._forward.compiled

    @property
    def compile_failure(self) -> str | None:
        """Why torch.compile was given up, when it was."""
        return self._forward.failure

    def batches_per_epoch(self) -> int:
        return -(-len(self.train_labels) // self.recipe.batch_size)

    def _autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.precision)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the model's input ``x`` and labels ``y`` at the learning rate already set:
        forward, loss (with the teacher's share when distilling), backward, step, weight average. Returns the
        loss and the output, detached."""
        r = self.recipe
        with self._autocast():
            out = self._forward(x)
        loss = batch_loss(out, y, r.label_smoothing)
        if self.teacher is not None:
            loss = (1 - r.distill) * loss + r.distill * self.teacher.loss(out, x, self.mean, self.std, self._autocast)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average:
            self.average.update()
        return loss.detach(), out.detach()

    def train_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict:
        """Train one epoch; returns train loss, train accuracy (in train mode, as it goes), lr and seconds."""
        r, epoch, size = self.recipe, self.epoch, self.recipe.batch_size
        start = time.perf_counter()
        self.model.train()
        n = len(self.train_labels)
        order = torch.randperm(n, generator=self.shuffle_gen).to(self.device)
        images, labels = self.train_images[order], self.train_labels[order]
        batches = self.batches_per_epoch()
        augmentation = (r, self.augment_gen) if r.augmented else None
        losses = torch.zeros(batches, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        b = 0
        with self._told(lambda: f"at epoch {epoch + 1}, batch {b + 1} of training"):  # one frame, not one a batch
            for b in range(batches):
                lr = lr_at(r, epoch, b, batches)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x = batch_inputs(images[b * size:(b + 1) * size], self.mean, self.std, self.memory_format,
                                 augmentation)
                y = labels[b * size:(b + 1) * size]
                losses[b], out = self.train_step(x, y)
                correct += (out.argmax(1) == y).sum()
                if on_batch:
                    on_batch(b + 1, batches)
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise TrainingError(f"the loss became {float(losses[bad])} at epoch {epoch + 1}, batch {bad + 1}; "
                                f"the run stopped and its last good checkpoint is kept (try a lower --lr).")
        sizes = torch.full((batches,), float(size), device=self.device)
        sizes[-1] = n - (batches - 1) * size
        return {"train_loss": float((losses * sizes).sum() / n), "train_acc": 100 * int(correct) / n,
                "lr": lr, "train_seconds": time.perf_counter() - start}

    @contextmanager
    def _told(self, where: Callable[[], str]) -> Iterator[None]:
        """A failure raised inside a user's model file becomes one sentence naming its line (``where()``: when,
        worked out only on failure)."""
        try:
            yield
        except TinyMnistError:
            raise
        except Exception as e:
            failure = model_failure(e, self.user_file, where()) if self.user_file else None
            if failure is None:
                raise
            raise failure from None

    def evaluate(self) -> dict:
        """Loss and accuracy over all the held-out images (``test_acc``, or ``val_acc`` on the validation split)."""
        start = time.perf_counter()
        with self._told(lambda: f"at epoch {self.epoch + 1}, in evaluation"):
            result = evaluate(self.saved_model, self.held_out_inputs, self.held_out_labels, _ready, self._autocast)
        p = self.score_prefix
        return {f"{p}_loss": result.loss, f"{p}_acc": result.acc, "eval_seconds": time.perf_counter() - start}

    def run_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict:
        train = self.train_epoch(on_batch)
        test = self.evaluate()
        metrics = {"epoch": self.epoch + 1, **train, **test,
                   "seconds": train["train_seconds"] + test["eval_seconds"]}
        self.history.append(metrics)
        return metrics

    # --- state for checkpoints: plain tensors and JSON, never pickle ----------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(value)
        tensors["rng.shuffle"] = self.shuffle_gen.get_state()
        tensors["rng.augment"] = self.augment_gen.get_state()
        if self.average:
            tensors.update({f"ema.{k}": v for k, v in self.average.model.state_dict().items()})
            tensors["ema_steps"] = torch.tensor(self.average.steps)
        return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        """The saved model's weights (the average, when kept), for weights.safetensors."""
        return {k: v.detach().contiguous().cpu() for k, v in self.saved_model.state_dict().items()}

    def load_state(self, tensors: dict[str, torch.Tensor], history: list[dict]) -> None:
        """Raises KeyError when ``tensors`` lack a part this trainer has (the average, a generator's state)."""
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        if self.average:
            self.average.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
            self.average.steps = int(tensors["ema_steps"])
        optim = self.optimizer.state_dict()
        optim["state"] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                optim["state"].setdefault(int(i), {})[name] = value.to(self.device)
        self.optimizer.load_state_dict(optim)
        self.shuffle_gen.set_state(tensors["rng.shuffle"])
        self.augment_gen.set_state(tensors["rng.augment"])
        self.history = [dict(m) for m in history]


def _ready(inputs: torch.Tensor) -> torch.Tensor:
    """The held-out inputs are the model's input already."""
    return inputs


def batch_inputs(images: torch.Tensor, mean: float, std: float, memory_format: torch.memory_format,
                 augmentation: tuple[Recipe, torch.Generator] | None = None) -> torch.Tensor:
    """uint8 images (B, 28, 28) -> the model's input (B, 1, 28, 28): augmented as the recipe says with the
    generator when ``augmentation`` is given, normalized, in ``memory_format``."""
    if augmentation:
        r, generator = augmentation
        images = augment(images.unsqueeze(1).float().div_(255), generator, r.rotate, r.shift, r.scale, r.elastic)
    return normalize(images, mean, std).contiguous(memory_format=memory_format)


DISTILL_TEMPERATURE = 4.0  # Hinton et al. 2015: the teacher's and student's probabilities softened alike


@dataclass
class Teacher:
    """A trained model to distill from, with the normalization it was trained with."""

    model: nn.Module
    mean: float
    std: float

    def placed(self, device: torch.device, memory_format: torch.memory_format) -> Teacher:
        model = self.model.to(device, memory_format=memory_format).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return Teacher(model, self.mean, self.std)

    def loss(self, student: torch.Tensor, x: torch.Tensor, mean: float, std: float,
             cast: Callable[[], AbstractContextManager]) -> torch.Tensor:
        """T^2 x KL(teacher || student) at DISTILL_TEMPERATURE on the student's batch ``x`` (normalized with
        ``mean``, ``std``; renormalized for the teacher when its own differ). Log-probabilities and logits
        soften alike: a constant shift does not change a softmax."""
        if (mean, std) != (self.mean, self.std):
            x = (x * std + mean - self.mean) / self.std
        with torch.no_grad(), cast():
            target = torch.log_softmax(self.model(x).float().flatten(1) / DISTILL_TEMPERATURE, dim=1)
        soft = torch.log_softmax(student.float() / DISTILL_TEMPERATURE, dim=1)
        kl = nn.functional.kl_div(soft, target, log_target=True, reduction="batchmean")
        return kl * DISTILL_TEMPERATURE ** 2


def batch_loss(log_probs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loss of a batch: mean negative log-likelihood, or cross-entropy with label smoothing."""
    if not label_smoothing:
        return nn.functional.nll_loss(log_probs.float(), labels)
    return nn.functional.cross_entropy(log_probs.float(), labels, label_smoothing=label_smoothing)


def model_inputs(mean: float, std: float, memory_format: torch.memory_format = torch.contiguous_format,
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images (N, 28, 28) -> the model's normalized input, in ``memory_format``."""
    return lambda images: batch_inputs(images, mean, std, memory_format)


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean negative log-likelihood
    acc: float  # percent
    log_probs: torch.Tensor  # (N, 10)

    @property
    def predicted(self) -> torch.Tensor:
        return self.log_probs.argmax(1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             inputs: Callable[[torch.Tensor], torch.Tensor],
             autocast: Callable[[], AbstractContextManager] = nullcontext) -> Evaluation:
    """Loss and accuracy of ``model`` on uint8 ``images`` (N, 28, 28) with ``labels``: the one evaluation that
    training, `eval`, reports and export checks share."""
    out = log_probs(model, images, inputs, autocast)
    loss = float(nn.functional.nll_loss(out, labels, reduction="sum")) / len(labels)
    acc = 100 * int((out.argmax(1) == labels).sum()) / len(labels)
    return Evaluation(loss, acc, out)


@torch.inference_mode()
def log_probs(model: nn.Module, images: torch.Tensor, inputs: Callable[[torch.Tensor], torch.Tensor],
              autocast: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """Log-probabilities (N, 10) of ``model`` in eval mode for uint8 images (N, 28, 28), in batches;
    ``inputs`` turns a uint8 batch into the model's input (normalization, layout)."""
    model.eval()
    outs = []
    for i in range(0, len(images), EVAL_BATCH):
        with autocast():
            outs.append(model(inputs(images[i:i + EVAL_BATCH])).float())
    return torch.cat(outs) if outs else torch.zeros(0, 10, device=images.device)


def make_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=(recipe.momentum, 0.999),
                                weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
