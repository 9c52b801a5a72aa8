"""What a model with a pretrained encoder tells the training engine about it.

The engine asks the model (does it have an encoder, what weights does it start from, how
must its input be normalised) and never checks which class it is, so a new architecture
with an encoder needs no change to the engine. pixelseg's ``lite-unet`` and the zoo's
``smp-*`` models implement this protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["PretrainedEncoderModel", "has_pretrained_encoder"]


@runtime_checkable
class PretrainedEncoderModel(Protocol):
    """A segmentation model whose ``encoder`` can start from pretrained weights."""

    @property
    def encoder(self) -> nn.Module: ...

    def default_encoder_weights(self) -> str:
        """What ``--encoder-weights auto`` means for this model on this machine: a weight
        set that is available without a download (``imagenet``), else ``none``."""
        ...

    def load_encoder_weights(self, weights: str) -> str:
        """Put ``weights`` (a weight set's name or a file) into the encoder; returns where
        they came from. Raises ModelError when they cannot be had or do not fit."""
        ...

    def encoder_normalization(self, weights: str) -> tuple[list[float], list[float]] | None:
        """(mean, std) per input channel that ``weights`` were trained with; None for
        ``none`` (the training images' own statistics are used)."""
        ...


def has_pretrained_encoder(model: nn.Module) -> bool:
    return isinstance(model, PretrainedEncoderModel)
