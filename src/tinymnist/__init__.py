"""tinymnist: design, train, prove and use very small CNNs on MNIST.

From Python (a notebook): ``train``, ``consistency``, ``show_layers``, ``recipe`` and ``load_mnist``; see
``tinymnist.use.api``. They are imported on first use, so that ``tinymnist check`` runs without torch."""

__version__ = "0.4.0"

_EXPORTS = {"load_mnist": "tinymnist.data", "create_model": "tinymnist.models", "list_models": "tinymnist.models",
            "register_model": "tinymnist.models", "Trainer": "tinymnist.training.engine",
            "Sink": "tinymnist.training.executor", "execute": "tinymnist.training.executor",
            "Options": "tinymnist.training.recipes", "RunSpec": "tinymnist.training.recipes",
            **dict.fromkeys(("Consistency", "Result", "consistency", "recipe", "show_layers", "train"),
                            "tinymnist.use.api")}

__all__ = ["Consistency", "Options", "Result", "RunSpec", "Sink", "Trainer", "__version__", "consistency",
           "create_model", "execute", "list_models", "load_mnist", "recipe", "register_model", "show_layers", "train"]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tinymnist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
