"""Name -> builder registry, so configs and the CLI can pick a model by a string.

Modelled on timm's ``_registry.py``: each module decorates its builders with
:func:`register_model`, and :func:`create_model` validates the user's arguments before
calling one, so a typo in a model name or option fails with a message that says what
would have been valid instead of a ``TypeError`` deep inside ``__init__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from pixelseg.errors import PixelsegError

__all__ = [
    "ModelError",
    "count_parameters",
    "create_model",
    "list_models",
    "model_description",
    "prefers_channels_last",
    "register_model",
]

ModelBuilder = Callable[..., nn.Module]
_BuilderT = TypeVar("_BuilderT", bound=ModelBuilder)

# Arguments every builder takes; create_model validates them itself.
_COMMON_ARGS = ("in_channels", "num_classes")


class ModelError(PixelsegError, ValueError):
    """Bad model name or model arguments (a ValueError, printed by the CLI without traceback)."""


@dataclass(frozen=True)
class _Entry:
    builder: ModelBuilder
    description: str
    prefers_channels_last: bool = False


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, *, description: str, prefers_channels_last: bool = False
) -> Callable[[_BuilderT], _BuilderT]:
    """Decorator registering ``fn(in_channels=3, num_classes=1, **kwargs) -> nn.Module``.

    ``prefers_channels_last``: the model trains faster in NHWC on a CPU in float32, so that
    ``--channels-last auto`` uses it there (see :func:`prefers_channels_last`).
    The builder is returned unchanged, so it can still be called directly.
    Registering a name twice raises, because silently replacing a model would make
    ``create_model`` depend on import order.
    """
    if not isinstance(name, str) or not name:
        raise ModelError(f"Model name must be a non-empty string, got {name!r}.")

    def decorator(fn: _BuilderT) -> _BuilderT:
        if name in _REGISTRY:
            raise ModelError(f"Model '{name}' is already registered.")
        _REGISTRY[name] = _Entry(fn, description, prefers_channels_last)
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise ModelError(f"Unknown model '{name}'. Valid models: {valid}") from None


def model_description(name: str) -> str:
    """One-line description given at registration."""
    return _lookup(name).description


def prefers_channels_last(name: str) -> bool:
    """Whether ``--channels-last auto`` trains this model in NHWC on a CPU in float32.

    A property of the model, measured, rather than of the CPU alone: in float32 the layout
    trained pixelseg's own models 1.1-1.6x faster on the two CPUs measured, and slowed the
    zoo's ResNet-34 U-Net to 0.70x on one of them (docs/benchmarks.md). It is fixed per
    model, not timed at start-up, so that the same command trains the same way every time.
    (With bf16 autocast or on CUDA, ``auto`` is channels_last for every model.)
    """
    return _lookup(name).prefers_channels_last


def _check_positive_int(value: object, what: str) -> None:
    # bool is an int subclass; `in_channels=True` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be an integer >= 1, got {value!r}.")


def _check_kwargs(name: str, builder: ModelBuilder, kwargs: dict[str, Any]) -> None:
    """Reject kwargs the builder does not declare, naming them and the accepted ones."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the builder takes **kwargs and validates them itself
    accepted = [
        p_name
        for p_name, p in params.items()
        if p_name not in _COMMON_ARGS
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        options = ", ".join(accepted) if accepted else "none"
        raise ModelError(
            f"Model '{name}' got unexpected keyword argument(s): {', '.join(unexpected)}. "
            f"Accepted options: {options}."
        )


def create_model(name: str, in_channels: int = 3, num_classes: int = 1, **kwargs: Any) -> nn.Module:
    """Build a registered model; its output is (N, num_classes, H, W) logits.

    Raises ModelError (a ValueError) for an unknown name, channel counts below 1, or
    keyword arguments the model does not take.
    """
    entry = _lookup(name)
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes")
    _check_kwargs(name, entry.builder, kwargs)
    return entry.builder(in_channels=in_channels, num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
