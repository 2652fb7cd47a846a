"""The model registry: ``@register_model`` and ``@register_family`` record a factory under its name,
``create_model(name)`` builds it. A parametric family builds ``FAMILY:key=value,...``; a user's own model file
(``FILE.py:NAME``, models/user.py) is built here too: this is the one place that turns a name into a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from tinymnist.errors import UsageError, unknown_name
from tinymnist.modelnames import is_user_model, parse_args, split_user_model
from tinymnist.models.user import build_user_model
from tinymnist.names import current

_REGISTRY: dict[str, Callable[[], nn.Module]] = {}
# Parametric families: ``FAMILY:key=value,...`` builds FAMILY(key=value, ...) (what the search records).
_FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Register a model factory under its function name."""
    _REGISTRY[factory.__name__] = factory
    return factory


def register_family(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a parametric family under its function name: ``NAME:key=value,...`` builds it."""
    _FAMILIES[factory.__name__] = factory
    return factory


def list_models() -> list[str]:
    return list(_REGISTRY)


def list_families() -> list[str]:
    return list(_FAMILIES)


def family_model(name: str) -> tuple[str, dict[str, object]] | None:
    """(family, arguments) when ``name`` is ``FAMILY:key=value,...``, else None."""
    family, colon, text = name.partition(":")
    if not colon or is_user_model(name):
        return None
    if family not in _FAMILIES:
        error = unknown_name("model family", family, list_families())
        raise UsageError(f"{error} A model of your own is named FILE.py:NAME.")
    return family, parse_args(text, name)


def model_name(name: str) -> str:
    """The registered name for ``name``: itself, or the new name of an old one (with a NameNote warning); a
    user's ``FILE.py:NAME`` as it is."""
    if is_user_model(name) or family_model(name):
        return name
    name = current("model", name)
    if name not in _REGISTRY:
        raise unknown_name("model", name, list_models())
    return name


def create_model(name: str, source: Path | None = None) -> nn.Module:
    """Build the registered model ``name``, or a user's ``FILE.py:NAME`` (from ``source`` instead of FILE when
    given: a run's kept copy). Unknown names raise UsageError with the closest match."""
    if is_user_model(name):
        path, attr, args = split_user_model(name)
        return build_user_model(source or path, attr, args)
    if family := family_model(name):
        try:
            return _FAMILIES[family[0]](**family[1])
        except TypeError as e:
            raise UsageError(f"{name}: {e}.") from None
    return _REGISTRY[model_name(name)]()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
