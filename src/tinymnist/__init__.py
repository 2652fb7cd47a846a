"""tinymnist: design, train, prove and use very small CNNs on MNIST.

From Python (a notebook): ``train``, ``consistency``, ``show_layers``, ``recipe`` and ``load_mnist``; see
``tinymnist.use.api``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.4.0"

# Each name is imported on first use (PEP 562), so the command line starts without torch; `tm.train` and
# `from tinymnist import train` work as before.
_FROM = {"load_mnist": "data", "create_model": "models", "list_models": "models", "register_model": "models",
         "Trainer": "training.engine", "Sink": "training.executor", "execute": "training.executor",
         "Options": "training.recipes", "RunSpec": "training.recipes", **dict.fromkeys(
             ("Consistency", "Result", "consistency", "recipe", "show_layers", "train"), "use.api")}

__all__ = ["Consistency", "Options", "Result", "RunSpec", "Sink", "Trainer", "__version__", "consistency",
           "create_model", "execute", "list_models", "load_mnist", "recipe", "register_model", "show_layers", "train"]


def __getattr__(name: str) -> object:
    if name in _FROM:
        return getattr(importlib.import_module(f"tinymnist.{_FROM[name]}"), name)
    if name.startswith("__"):  # what tools probe for (__wrapped__, __file__ of a stub...): not a module of ours
        raise AttributeError(f"module 'tinymnist' has no attribute {name!r}")
    try:
        return importlib.import_module(f"tinymnist.{name}")  # a room or module, as `tm.errors`
    except ModuleNotFoundError as e:
        if e.name != f"tinymnist.{name}":
            raise
        raise AttributeError(f"module 'tinymnist' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM})


if TYPE_CHECKING:
    from tinymnist.data import load_mnist
    from tinymnist.models import create_model, list_models, register_model
    from tinymnist.training.engine import Trainer
    from tinymnist.training.executor import Sink, execute
    from tinymnist.training.recipes import Options, RunSpec
    from tinymnist.use.api import Consistency, Result, consistency, recipe, show_layers, train
