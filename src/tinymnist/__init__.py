"""tinymnist: design, train, prove and use very small CNNs on MNIST.

From Python (a notebook): ``train``, ``consistency``, ``show_layers``, ``recipe`` and ``load_mnist``; see
``tinymnist.api``."""

__version__ = "0.4.0"

from .api import Consistency, Result, consistency, recipe, show_layers, train  # __version__ first
from .data import load_mnist
from .engine import Trainer
from .executor import Sink, execute
from .models import create_model, list_models, register_model
from .recipes import Options, RunSpec

__all__ = ["Consistency", "Options", "Result", "RunSpec", "Sink", "Trainer", "__version__", "consistency",
           "create_model", "execute", "list_models", "load_mnist", "recipe", "register_model", "show_layers", "train"]
