"""Models: the registry and its renames (``registry``), the blocks and the built-in architectures (``zoo``), a
user's own model file (``user``), the layer table with parameters, receptive field and FLOPs (``layers``).

The rest of the package imports the names below from here; importing the package registers the zoo."""

from tinymnist.modelnames import file_sha256, format_args, is_user_model, parse_args, split_user_model
from tinymnist.models.registry import (
    count_params,
    create_model,
    family_model,
    list_families,
    list_models,
    model_name,
    register_family,
    register_model,
)
from tinymnist.models.user import fixed_trial, prepare_model, user_space
from tinymnist.models.zoo import Net, conv, separable, tiny, tiny_fits, tiny_params

__all__ = ["Net", "conv", "count_params", "create_model", "family_model", "file_sha256", "fixed_trial",
           "format_args", "is_user_model", "list_families", "list_models", "model_name", "parse_args",
           "prepare_model", "register_family", "register_model", "separable", "split_user_model", "tiny",
           "tiny_fits", "tiny_params", "user_space"]
