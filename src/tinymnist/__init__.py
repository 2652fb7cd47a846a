"""tinymnist: design, train, prove and use very small CNNs on MNIST.

From Python (a notebook): ``train``, ``consistency``, ``show_layers``, ``recipe`` and ``load_mnist``; see
``tinymnist.use.api``."""

__version__ = "0.4.0"

from tinymnist.data import load_mnist
from tinymnist.models import create_model, list_models, register_model
from tinymnist.training.engine import Trainer
from tinymnist.training.executor import Sink, execute
from tinymnist.training.recipes import Options, RunSpec
from tinymnist.use.api import Consistency, Result, consistency, recipe, show_layers, train  # __version__ first

__all__ = ["Consistency", "Options", "Result", "RunSpec", "Sink", "Trainer", "__version__", "consistency",
           "create_model", "execute", "list_models", "load_mnist", "recipe", "register_model", "show_layers", "train"]
