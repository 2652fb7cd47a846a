"""A model of the user's own: ``FILE.py:NAME`` names an ``nn.Module`` class with a no-argument constructor, or a
function returning one, in one self-contained Python file (plain torch; nothing from tinymnist needed). It may
return logits or log-probabilities for the 10 classes: tinymnist applies ``log_softmax`` to its output, which
leaves log-probabilities unchanged. ``FILE.py:SPACE:key=value,...`` is the model a search space (a function of
an Optuna trial) builds for those trial parameters. Also the ``key=value,...`` argument syntax that model
families share. models.create_model is the one place that turns a name into a model; it calls these.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tinymnist.errors import UsageError, unknown_name
from tinymnist.modelnames import file_sha256, format_args


def _check_self_contained(path: Path, tree: ast.Module) -> None:
    """A run keeps a copy of the model file, so the file must not import its neighbours."""
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise UsageError(f"{path} line {node.lineno}: a relative import; keep the model in one file (that "
                                 f"file is what a run keeps).")
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            top = name.split(".")[0]
            if (path.parent / f"{top}.py").exists() or (path.parent / top / "__init__.py").exists():
                raise UsageError(f"{path} line {node.lineno}: imports {top!r} from a file beside it; keep the model "
                                 f"in one file (that file is what a run keeps).")


USER_MODULE = "tinymnist_user_"  # the prefix of the module name a user's model file is imported under


def _load_module(path: Path) -> object:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; give FILE.py:NAME with the path of your model file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read ({e}).") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise UsageError(f"{path} line {e.lineno}: syntax error ({e.msg}); fix the file.") from None
    _check_self_contained(path, tree)
    module_name = f"{USER_MODULE}{file_sha256(path)[:16]}"
    if module_name in sys.modules:  # the same bytes were loaded already
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # whatever the user's file raises, one sentence names it
        raise UsageError(f"{path} failed to import ({type(e).__name__}: {e}); fix the file.") from None
    sys.modules[module_name] = module
    return module


def build_user_model(path: Path, attr: str, params: dict[str, object] | None = None) -> nn.Module:
    """Build ``attr`` from the model file ``path`` and check it maps (N, 1, 28, 28) to (N, 10); the output then
    goes through log_softmax. With ``params``, ``attr`` is a search space: the model it returns for a trial
    with those parameters (optuna's FixedTrial)."""
    if params is not None:
        space = user_space(path, attr)
        try:
            model = space(fixed_trial(params))[0]
        except Exception as e:  # whatever the user's space raises, one sentence names it
            raise UsageError(f"{path}:{attr} failed for the parameters {format_args(params)} "
                             f"({type(e).__name__}: {e}).") from None
        return prepare_model(model, f"{path}:{attr}")
    module = _load_module(path)
    factory = getattr(module, attr, None)
    if factory is None:
        candidates = [n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                      and getattr(v, "__module__", None) == module.__name__]
        raise unknown_name(f"class or function in {path}:", attr, candidates)
    try:
        model = factory()
    except Exception as e:
        raise UsageError(f"{path}:{attr}() failed ({type(e).__name__}: {e}); it must build with no arguments.") \
            from None
    return prepare_model(model, f"{path}:{attr}")


def user_space(path: Path, attr: str) -> Callable:
    """The search-space function ``attr`` of the model file ``path``."""
    space = getattr(_load_module(path), attr, None)
    if not callable(space):
        raise UsageError(f"{path} has no function {attr}(trial); a search space is a function of an Optuna trial "
                         f"returning (model, recipe settings).")
    return space


def fixed_trial(params: dict[str, object]) -> object:
    try:
        import optuna
    except ImportError:
        raise UsageError("this model comes from a search space and is rebuilt with Optuna; install it with "
                         "pip install 'tinymnist[search]'.") from None
    return optuna.trial.FixedTrial(params)


def prepare_model(model: object, where: str) -> nn.Module:
    """A user's model, checked (an nn.Module mapping (N, 1, 28, 28) to (N, 10)) and given a log_softmax on its
    output; ``where`` names it in the error."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"{where}() returned {type(model).__name__}, not a torch.nn.Module.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 1, 28, 28))
    except Exception as e:
        raise UsageError(f"{where} fails on a batch of (2, 1, 28, 28) images ({type(e).__name__}: {e}).") from None
    model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"{where} maps (2, 1, 28, 28) images to {shape}; it must return (N, 10) logits or "
                         f"log-probabilities.")
    model.register_forward_hook(_log_softmax)
    return model


def _log_softmax(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(output, dim=1)
