"""Pretrained encoder weights and the input normalisation that goes with them.

``--encoder-weights`` takes:

- ``none``: random weights; images are normalised with the training set's own statistics.
- ``imagenet`` (or another weight name smp lists for the encoder, e.g. ``advprop``):
  fetched by smp/timm from the Hugging Face hub into their usual cache
  (``~/.cache/huggingface``); offline, the cached copy is used, and with neither the
  error says so and how to give a file instead.
- a file path (``.pth``, ``.pt``, ``.bin`` or ``.safetensors``): a state dict of the
  encoder (smp's ``model.encoder``), or of the classification network it comes from,
  e.g. torchvision's ``resnet34-b627a593.pth`` or a timm checkpoint; classifier weights
  are ignored, anything else that does not fit is an error naming the keys.

Weights pretrained on RGB images adapt to greyscale input the way smp does it (the first
convolution's filters summed over colour). Input normalisation follows the pretraining
(the weights' ``config.json`` mean/std, or timm's pretrained config; ImageNet's for a
file), is saved in the run's ``config.json``, and so applies in ``predict`` and exports.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from pixelseg.models.registry import ModelError
from pixelseg.models.zoo import ZooModel, import_smp

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "encoder_families",
    "encoder_normalization",
    "is_weights_file",
    "load_encoder_weights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# keys of a classification network that an encoder does not have
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "_fc.", "model.fc.", "model.head.")
# prefixes a saved state dict may carry around the encoder's own keys
WRAPPER_PREFIXES = ("module.", "net.encoder.", "encoder.", "model.")

OFFLINE_HELP = (
    "With no network, fetch them once where there is one (they are kept in the Hugging "
    "Face cache, ~/.cache/huggingface, which can be copied), or give a local file: "
    "--encoder-weights PATH (a state dict of the encoder or of the ImageNet classifier it "
    "comes from, e.g. torchvision's resnet34-b627a593.pth)."
)


def is_weights_file(weights: str) -> bool:
    """Whether ``--encoder-weights`` names a file rather than a weight set like imagenet."""
    return weights.endswith(WEIGHT_SUFFIXES) or "/" in weights or Path(weights).is_file()


def load_encoder_weights(model: nn.Module, weights: str) -> None:
    """Put pretrained weights (``imagenet``, another smp weight name, or a file) into the
    encoder of a zoo model, in place. Raises ModelError with what went wrong."""
    if not isinstance(model, ZooModel):
        raise ModelError(
            "--encoder-weights applies to the smp-* models, which have a pretrained encoder"
        )
    smp = import_smp()
    encoder = model.encoder
    in_channels = model.in_channels
    depth = int(getattr(encoder, "_depth", 5))
    stride = int(getattr(encoder, "_output_stride", 32))
    name = model.encoder_name
    if is_weights_file(weights):
        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"{path}: encoder weights file not found")
        if _is_timm(encoder):
            source = _timm_from_file(smp, encoder.name, name, path, in_channels, depth, stride)
        else:  # the file holds RGB (ImageNet) weights: load them as such, then adapt the input
            source = smp.encoders.get_encoder(
                name, in_channels=3, depth=depth, weights=None, output_stride=stride
            )
            _load_state(source, _read_state_dict(path), f"{path}", name)
            source.set_in_channels(in_channels, pretrained=True)
    else:
        if _is_timm(encoder) and weights != "imagenet":
            raise ModelError(
                f"encoder {name} is a timm model: its pretrained weights are timm's, chosen by "
                f"a tag in the name (tu-<model>.<tag>); use --encoder-weights imagenet"
            )
        try:
            with warnings.catch_warnings():  # smp warns that timm encoders take no weight name
                warnings.simplefilter("ignore", UserWarning)
                source = smp.encoders.get_encoder(
                    name, in_channels=in_channels, depth=depth, weights=weights,
                    output_stride=stride,
                )  # fmt: skip
        except KeyError as error:  # a weight name this encoder does not have
            raise ModelError(f"encoder {name}: {error.args[0]}") from None
        except Exception as error:  # noqa: BLE001 - the hub raises many kinds
            raise ModelError(
                f"could not get the '{weights}' weights of encoder {name}: no network and no "
                f"cached copy ({type(error).__name__}: {_first_line(error)}). {OFFLINE_HELP}"
            ) from None
    encoder.load_state_dict(source.state_dict())


def encoder_normalization(
    encoder: str, weights: str, in_channels: int
) -> tuple[list[float], list[float]] | None:
    """(mean, std) per input channel that the pretrained weights expect; None for
    ``weights="none"`` (then the training set's own statistics are used)."""
    if weights == "none":
        return None
    mean, std = _pretraining_stats(encoder, weights)
    if in_channels == 1:  # the RGB filters were summed: one channel, the average statistics
        return [sum(mean) / 3], [sum(std) / 3]
    return list(mean), list(std)


def _pretraining_stats(encoder: str, weights: str) -> tuple[tuple[float, ...], ...]:
    if is_weights_file(weights):
        return IMAGENET_MEAN, IMAGENET_STD
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
        return IMAGENET_MEAN, IMAGENET_STD
    smp = import_smp()
    settings = smp.encoders.encoders[encoder]["pretrained_settings"].get(weights)
    if settings is None:
        return IMAGENET_MEAN, IMAGENET_STD
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import CONFIG_NAME

    try:  # the weights were just fetched, so the hub's config file is in the cache
        path = hf_hub_download(
            settings["repo_id"], CONFIG_NAME, revision=settings["revision"],
            local_files_only=True,
        )  # fmt: skip
        config = json.loads(Path(path).read_text())
        return tuple(config["mean"]), tuple(config["std"])
    except Exception:  # noqa: BLE001 - no cached config: the encoders' common default
        return IMAGENET_MEAN, IMAGENET_STD


def _is_timm(encoder: nn.Module) -> bool:
    """smp's wrapper of a timm model (``tu-`` names, and the ``timm-`` ones smp maps to it)."""
    from segmentation_models_pytorch.encoders.timm_universal import TimmUniversalEncoder

    return isinstance(encoder, TimmUniversalEncoder)


def _timm_from_file(
    smp: ModuleType,
    timm_name: str,
    name: str,
    path: Path,
    in_channels: int,
    depth: int,
    stride: int,
) -> nn.Module:
    """A timm encoder with a timm checkpoint file: timm's own loader reads it (it knows its
    models' key names, drops the classifier and adapts the first convolution). timm loads
    into a feature extractor without checking the keys, so the file is first loaded, strictly,
    into the whole network it claims to be."""
    import timm

    overlay = {"file": str(path)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay)
            return smp.encoders.get_encoder(
                name, in_channels=in_channels, depth=depth, weights=True,
                output_stride=stride, pretrained_cfg_overlay=overlay,
            )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - pickle, key and shape errors differ
        raise ModelError(
            f"{path}: not weights timm can load into {name} ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and safetensors errors differ
        raise ModelError(f"{path}: not a readable weights file ({_first_line(error)})") from None
    for key in ("state_dict", "model", "encoder"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict (names -> tensors)")
    return state


def _load_state(encoder: nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Load ``state`` into ``encoder``, trying the usual key prefixes; strict otherwise."""
    own = encoder.state_dict()
    best: dict[str, torch.Tensor] = {}
    for candidate in _rekeyed(state):
        if len(set(candidate) & set(own)) > len(set(best) & set(own)):
            best = candidate
    extra = sorted(k for k in set(best) - set(own) if not k.startswith(HEAD_PREFIXES))
    missing = sorted(set(own) - set(best))
    shapes = sorted(k for k in set(own) & set(best) if own[k].shape != best[k].shape)
    if missing or extra or shapes:
        problems = []
        for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if keys:
                problems.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})")
        raise ModelError(f"{source}: not weights for encoder {name}: {'; '.join(problems)}")
    encoder.load_state_dict({k: best[k] for k in own})


def _rekeyed(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The state dict as given, without each wrapper prefix, and with timm's ``model.``."""
    out = [state]
    for prefix in WRAPPER_PREFIXES:  # e.g. a whole model's state dict: keep its encoder
        inner = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            out.append(inner)
    out.append({f"model.{k}": v for k, v in state.items()})  # smp's wrapper of timm models
    return out


# Families for `pixelseg models`: the first prefix a name starts with (longest first).
FAMILY_PREFIXES = (
    "timm-tf_efficientnet_lite", "timm-efficientnet", "timm-skres", "se_resnext", "se_resnet",
    "senet", "resnext", "resnet", "dpn", "vgg", "densenet", "inception", "efficientnet",
    "mobilenet", "mobileone", "xception", "mit_",
)  # fmt: skip


def encoder_families() -> dict[str, list[str]]:
    """smp's encoder names grouped by family, e.g. ``{"resnet": ["resnet18", ...]}``."""
    smp = import_smp()
    families: dict[str, list[str]] = {}
    for name in smp.encoders.get_encoder_names():
        prefix = next((p for p in FAMILY_PREFIXES if name.startswith(p)), name)
        families.setdefault(prefix.rstrip("_-"), []).append(name)
    return families
