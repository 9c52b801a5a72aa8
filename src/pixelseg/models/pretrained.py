"""What a model with a pretrained encoder tells the training engine about it.

The engine asks the model (does it have an encoder, what weights does it start from, how
must its input be normalised) and never checks which class it is, so a new architecture
with an encoder needs no change to the engine. pixelseg's ``lite-unet`` and the zoo's
``smp-*`` models implement this protocol.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

__all__ = ["PretrainedEncoderModel", "freeze_module", "has_pretrained_encoder"]


class PretrainedEncoderModel(Protocol):
    """A segmentation model whose ``encoder`` can start from pretrained weights."""

    @property
    def encoder(self) -> nn.Module: ...

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        """Channels of the encoder's feature maps, shallowest first (the decoder's inputs)."""
        ...

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (``frozen=False``: restart) the encoder's weights from learning."""
        ...

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
    """Whether ``model`` implements :class:`PretrainedEncoderModel`.

    Checked by hand rather than with a runtime-checkable Protocol: from Python 3.12 on,
    ``isinstance`` against one looks attributes up statically, and an ``nn.Module``'s
    submodules (``self.encoder = ...``) live in ``_modules``, where that lookup never finds
    them.
    """
    methods = ("default_encoder_weights", "load_encoder_weights", "encoder_normalization")
    return isinstance(getattr(model, "encoder", None), nn.Module) and all(
        callable(getattr(model, name, None)) for name in methods
    )


def freeze_module(module: nn.Module, frozen: bool = True) -> None:
    """No gradient for ``module``'s weights (or gradients again). Batch-norm statistics still
    follow the data in training mode: ``pixelseg train --freeze-encoder-epochs`` freezes
    the same way (an encoder learning rate of 0), so that normalisation adapts to the new
    images while the filters stay as loaded."""
    for param in module.parameters():
        param.requires_grad_(not frozen)
