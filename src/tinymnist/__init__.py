"""tinymnist: design, train, prove and use very small CNNs on MNIST."""

__version__ = "0.1.0"

from .engine import Trainer, fit  # noqa: E402 - __version__ first: submodules read it
from .models import create_model, list_models, register_model  # noqa: E402
from .recipes import Options  # noqa: E402

__all__ = ["Options", "Trainer", "__version__", "create_model", "fit", "list_models", "register_model"]
