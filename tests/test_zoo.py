"""The zoo extra: smp-* architectures, pretrained encoder weights offline, fine-tuning.

These tests need segmentation-models-pytorch (``pip install "pixelseg[zoo]"``); they skip
without it, unless PIXELSEG_REQUIRE_ZOO=1 (``make test`` runs them in a second
environment that has it), where that is a failure. Nothing here touches the network:
weights are made by the tests, and the hub is told to stay offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixelseg.cli import main
from pixelseg.models import ModelError, create_model
from pixelseg.models.zoo import ARCHITECTURES

ZOO = [f"smp-{name}" for name in ARCHITECTURES]
TINY = "resnet18"  # the smallest encoder that every architecture takes


@pytest.fixture(scope="module")
def smp():
    try:
        import segmentation_models_pytorch
    except ImportError:
        if os.environ.get("PIXELSEG_REQUIRE_ZOO") == "1":
            pytest.fail("segmentation-models-pytorch required (PIXELSEG_REQUIRE_ZOO=1)")
        pytest.skip("the zoo extra is not installed")
    return segmentation_models_pytorch


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test reaches the hub; each sees an empty Hugging Face cache of its own."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    try:
        import huggingface_hub.constants as hub  # read at import: patch the module too
    except ImportError:  # no zoo extra: nothing could reach the hub anyway
        hub = None
    if hub is not None:
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache), raising=False)
    torch.manual_seed(0)
    return cache


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails
    with pytest.raises(ModelError, match=r"pip install torch==2\.14\.1 torchvision==0\.29\.1"):
        create_model("smp-unet")
    # the native models do not need it
    assert create_model("lesson-unet")(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)


# --- every architecture ---------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_forward_backward_odd_size_and_reload(smp, name: str, tmp_path: Path) -> None:
    """Any H x W (padded inside, cropped back), gradients everywhere, and the saved
    weights give the same output after a reload."""
    from safetensors.torch import load_file, save_file

    model = create_model(name, in_channels=3, num_classes=2, encoder=TINY)
    out = model(torch.randn(2, 3, 67, 93))
    assert out.shape == (2, 2, 67, 93)
    out.square().mean().backward()
    # every trainable parameter learns; the only ones left out are stages smp keeps but the
    # architecture does not use (PSPNet's encoder stops at stride 8), which DDP would refuse
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        else:
            assert param_name.startswith("net.encoder.layer") and param.grad is None
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    again = create_model(name, in_channels=3, num_classes=2, encoder=TINY)
    again.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_greyscale_input_and_a_transformer_encoder(smp) -> None:
    model = create_model("smp-unet", in_channels=1, num_classes=3, encoder=TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 24)).shape == (1, 3, 40, 24)
        segformer = create_model("smp-segformer", encoder="mit_b0").eval()
        assert segformer(torch.randn(1, 3, 45, 70)).shape == (1, 1, 45, 70)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder": "resnet19"}, r"unknown encoder 'resnet19'\. Encoders: resnet18, resnet34"),
        ({"encoder": "tu-not_a_model"}, r"'not_a_model' is not a timm model"),
        ({"encoder_weights": "imagenet"}, r"--encoder-weights"),
        ({"decoder_channels": "wide"}, r"smp-unet with encoder resnet34"),
        ({"no_such_option": 1}, r"smp-unet with encoder resnet34: .*no_such_option"),
    ],
)
def test_impossible_settings_raise_a_clear_model_error(smp, kwargs: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        create_model("smp-unet", **kwargs)


# --- pretrained encoder weights --------------------------------------------------------


def _classifier_file(smp, path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-style ResNet-18 classifier state dict (encoder keys plus ``fc.*``)."""
    state = smp.encoders.get_encoder(TINY, weights=None).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({**state, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    return state


def test_weights_file_loads_into_the_encoder(smp, tmp_path: Path) -> None:
    from pixelseg.models.encoders import load_encoder_weights

    state = _classifier_file(smp, tmp_path / "resnet18.pth")
    model = create_model("smp-fpn", num_classes=2, encoder=TINY)
    load_encoder_weights(model, str(tmp_path / "resnet18.pth"))
    loaded = model.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # greyscale: the RGB filters of the first convolution are summed, as smp does it
    grey = create_model("smp-fpn", in_channels=1, num_classes=2, encoder=TINY)
    load_encoder_weights(grey, str(tmp_path / "resnet18.pth"))
    expected = state["conv1.weight"].sum(1, keepdim=True)
    assert torch.allclose(grey.encoder.state_dict()["conv1.weight"], expected)


def test_weights_file_of_another_network_names_the_keys(smp, tmp_path: Path) -> None:
    from pixelseg.models.encoders import load_encoder_weights

    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "other.pth")
    model = create_model("smp-unet", encoder=TINY)
    with pytest.raises(
        ModelError, match=r"other\.pth: not weights for encoder resnet18: .*missing"
    ):
        load_encoder_weights(model, str(tmp_path / "other.pth"))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"broken\.pth: not a readable weights file"):
        load_encoder_weights(model, str(tmp_path / "broken.pth"))
    with pytest.raises(ModelError, match=r"missing\.pth: encoder weights file not found"):
        load_encoder_weights(model, str(tmp_path / "missing.pth"))


def test_imagenet_offline_without_a_cache_says_so(smp) -> None:
    from pixelseg.models.encoders import load_encoder_weights

    model = create_model("smp-unet", encoder=TINY)
    with pytest.raises(ModelError) as excinfo:
        load_encoder_weights(model, "imagenet")
    message = str(excinfo.value)
    assert "no network and no cached copy" in message
    assert "--encoder-weights PATH" in message


def test_imagenet_weights_come_from_the_hub_cache(smp, _offline: Path) -> None:
    """smp's own download path, served by a cache the test fills (as a first online run
    would): the weights load, and the normalisation is the one in their config.json."""
    from safetensors.torch import save_file

    from pixelseg.models.encoders import encoder_normalization, load_encoder_weights

    settings = smp.encoders.encoders[TINY]["pretrained_settings"]["imagenet"]
    repo = "models--" + settings["repo_id"].replace("/", "--")
    snapshot = _offline / repo / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    state = smp.encoders.get_encoder(TINY, weights=None).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, snapshot / "model.safetensors")
    config = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "input_range": [0, 1]}
    (snapshot / "config.json").write_text(json.dumps(config))

    model = create_model("smp-unet", encoder=TINY)
    load_encoder_weights(model, "imagenet")
    assert torch.equal(
        model.encoder.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"]
    )
    assert encoder_normalization(TINY, "imagenet", 3) == (config["mean"], config["std"])
    mean, std = encoder_normalization(TINY, "imagenet", 1)
    assert mean == pytest.approx([0.4]) and std == pytest.approx([0.25])


# --- training, prediction and evaluation through the CLI ------------------------------

TRAIN = ["--size", "64", "--batch-size", "4", "--device", "cpu", "--encoder", TINY]


def _fresh_process(*args: str) -> subprocess.CompletedProcess:
    """``pixelseg ...`` in a new interpreter, offline, with no proxy to reach anything."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "HTTPS_PROXY": "http://0.0.0.0:9"}
    done = subprocess.run(
        [sys.executable, "-m", "pixelseg", *args], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_train_then_predict_and_evaluate_in_a_fresh_process(
    smp, tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", str(tiny_data), "--model", "smp-unet", "--encoder-weights", "none"]
    assert main([*args, *TRAIN, "--epochs", "1", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "smp-unet" and config["model_kwargs"] == {"encoder": TINY}
    assert (run / "model.safetensors").is_file()
    _fresh_process("predict", str(run), str(tiny_data / "images"), "--out", str(tmp_path / "p"))
    assert len(list((tmp_path / "p").glob("*_mask.png"))) == 12
    _fresh_process("evaluate", str(run), str(tiny_data), "--out", str(tmp_path / "e"))
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n_images"] > 0


def test_pretrained_file_frozen_encoder_and_its_normalisation(
    smp, tiny_data: Path, tmp_path: Path
) -> None:
    """With weights from a file the encoder starts from them, stays as loaded during the
    frozen epoch (learning rate 0), and the input is normalised as for ImageNet."""
    from safetensors.torch import load_file

    from pixelseg.models.encoders import IMAGENET_MEAN, IMAGENET_STD

    state = _classifier_file(smp, tmp_path / "resnet18.pth")
    trained = [k for k in state if state[k].is_floating_point() and "running" not in k]

    def encoder_after(freeze: int) -> dict[str, torch.Tensor]:
        run = tmp_path / f"run-{freeze}"
        args = ["train", str(tiny_data), "--model", "smp-linknet", "--encoder-weights",
                str(tmp_path / "resnet18.pth"), "--freeze-encoder-epochs", str(freeze),
                "--epochs", "1", "--no-augment", "--out", str(run)]  # fmt: skip
        assert main([*args, *TRAIN]) == 0
        config = json.loads((run / "config.json").read_text())
        assert config["mean"] == pytest.approx(IMAGENET_MEAN)
        assert config["std"] == pytest.approx(IMAGENET_STD)
        weights = load_file(run / "model.safetensors")
        prefix = "net.encoder."
        return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}

    frozen, tuned = encoder_after(1), encoder_after(0)
    assert all(torch.equal(frozen[k], state[k]) for k in trained)
    assert not all(torch.equal(tuned[k], state[k]) for k in trained)


def test_encoder_options_are_refused_for_native_models(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    args = ["train", str(tiny_data), "--model", "lesson-unet", "--encoder-weights", "imagenet"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    assert "apply to the smp-* models" in capsys.readouterr().err


def test_models_command_lists_native_and_zoo_models(smp, capsys) -> None:
    assert main(["models", "--size", "64"]) == 0
    out = capsys.readouterr().out
    for name in ["lesson-segnet", "lesson-unet", "unet", *ZOO]:
        assert f"\n{name} " in out
    assert "resnet18, resnet34" in out and "mit_b0" in out and "tu-<name>" in out
