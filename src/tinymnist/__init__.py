"""tinymnist: design, train, prove and use very small CNNs on MNIST.

From Python (a notebook): ``train``, ``consistency``, ``show_layers``, ``recipe`` and ``load_mnist``; see
``tinymnist.api``."""

__version__ = "0.4.0"

from .api import Consistency, Result, consistency, recipe, show_layers, train  # noqa: E402 - __version__ first
from .data import load_mnist  # noqa: E402
from .engine import Trainer  # noqa: E402
from .executor import Sink, execute  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402
from .recipes import Options, RunSpec  # noqa: E402

__all__ = ["Consistency", "Options", "Result", "RunSpec", "Sink", "Trainer", "__version__", "consistency",
           "create_model", "execute", "list_models", "load_mnist", "recipe", "register_model", "show_layers", "train"]
