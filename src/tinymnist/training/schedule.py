"""The learning-rate schedule: a pure function of a recipe and the position in training, so that resuming
needs no scheduler state."""

from __future__ import annotations

from tinymnist.training.recipes import Recipe


def lr_at(recipe: Recipe, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """Learning rate for 0-based ``epoch`` and ``batch``; stateless, so resuming needs no scheduler state."""
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** (epoch // recipe.step_size)
    if recipe.schedule == "onecycle":
        total = (recipe.cycle_epochs or recipe.epochs) * batches_per_epoch
        t = min(epoch * batches_per_epoch + batch + 1, total)
        rise = max(1, round(recipe.warmup * total))
        if t <= rise:
            return recipe.lr * t / rise
        fall = (t - rise) / max(1, total - rise)
        return recipe.lr * (1 - fall * (1 - recipe.final_lr))
    return recipe.lr
