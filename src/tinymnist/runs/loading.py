"""Loading a trained model: a reader of a run's artifacts (its weights, with the normalization, precision and
layout it recorded), not part of the record's storage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tinymnist.errors import CheckpointError, UsageError
from tinymnist.modelnames import is_user_model
from tinymnist.models import count_params, create_model
from tinymnist.runs.records import WEIGHTS, RunRecord, read_safetensors


def load_weights(path: Path, model: str, source: Path | None = None) -> torch.nn.Module:
    """Build ``model`` (a user's from ``source``) and load ``path`` into it, checking every tensor's name, shape
    and dtype."""
    tensors = read_safetensors(path, model)
    module = create_model(model, source)
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match model {model!r} (missing: {missing[:3]}, "
                              f"unexpected: {extra[:3]}).")
    for name, ref in expected.items():
        got = tensors[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {tuple(got.shape)} {got.dtype}, model {model!r} "
                                  f"expects {tuple(ref.shape)} {ref.dtype}.")
    module.load_state_dict(tensors)
    return module.eval()


@dataclass
class LoadedModel:
    """A run's trained model with everything needed to feed it as it was trained."""

    name: str
    model: torch.nn.Module
    mean: float
    std: float
    precision: str  # what it trained with: evaluating with the same gives the recorded accuracy
    channels_last: bool

    @property
    def params(self) -> int:
        return count_params(self.model)


def load_model(run: RunRecord, trust: bool = False) -> LoadedModel:
    """The one way to load a run's model: its weights, with its recorded normalization and precision (a user's
    model under the trust rule of ``RunRecord.model_source``)."""
    recipe, options = run.require().recipe(), run.options()
    precision = run.summary().get("precision") if run.finished() else None
    normalization = run.normalization()
    if normalization is None:
        raise UsageError(f"{run.path} records no normalization (an unfinished run of an earlier version); "
                         f"finish it with: tinymnist train --resume {run.path}")
    mean, std = normalization
    model = load_weights(run / WEIGHTS, recipe.model, run.model_source(trust))
    return LoadedModel(recipe.model, model, mean, std, precision or options.precision,
                       options.channels_last and fits_channels_last(recipe.model, model))


def fits_channels_last(name: str, model: torch.nn.Module) -> bool:
    """Whether ``model`` is fed channels_last as it trained: a registered model always; a user's model only when
    the training's probe (the same outputs in both layouts) passes again, so one that trained in plain NCHW (a
    ``x.view`` after its convolutions) is loaded in plain NCHW."""
    if not is_user_model(name):
        return True
    from tinymnist.training.user_models import PROBE_IMAGES, safe_memory_format

    probe = torch.randn(PROBE_IMAGES, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return safe_memory_format(model, torch.channels_last, probe) == torch.channels_last
