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


def test_a_zoo_model_describes_and_freezes_its_encoder(smp) -> None:
    model = create_model("smp-unet", encoder=TINY)
    assert model.encoder_channels == tuple(model.net.encoder.out_channels)
    model.freeze_encoder()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.net.decoder.parameters())
    model.freeze_encoder(False)
    assert any(p.requires_grad for p in model.encoder.parameters())


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
    # deployable as the native models are: ONNX export, and the torch-free engine agrees
    pytest.importorskip("onnxruntime")
    from pixelseg.inference.export import export_onnx

    exported = export_onnx(run, dynamic=True)
    assert exported.max_abs_diff < 1e-4 * max(1.0, exported.max_abs_logit)
    images = str(tiny_data / "images")
    _fresh_process("predict", str(run), images, "--out", str(tmp_path / "o"), "--engine", "onnx")
    for mask in (tmp_path / "p").glob("*_mask.png"):
        assert mask.read_bytes() == (tmp_path / "o" / mask.name).read_bytes(), mask.name


def test_pretrained_file_frozen_encoder_and_its_normalisation(
    smp, tiny_data: Path, tmp_path: Path
) -> None:
    """With weights from a file the encoder starts from them, stays as loaded during the
    frozen epoch (learning rate 0), and the input is normalised as for ImageNet."""
    from pixelseg.models.encoders import IMAGENET_MEAN, IMAGENET_STD

    state = _classifier_file(smp, tmp_path / "resnet18.pth")
    trained = [k for k in state if state[k].is_floating_point() and "running" not in k]

    def encoder_after_epoch_1(freeze: int) -> dict[str, torch.Tensor]:
        from pixelseg.config import TrainConfig
        from pixelseg.engine.train import fit

        run, seen = tmp_path / f"run-{freeze}", {}

        def look(row: dict) -> None:  # last.pt is written before this is called
            if row["epoch"] == 1:
                seen.update(torch.load(run / "last.pt", weights_only=True)["model"])

        cfg = TrainConfig(
            data=str(tiny_data), out=str(run), model="smp-linknet", model_kwargs={"encoder": TINY},
            encoder_weights=str(tmp_path / "resnet18.pth"), freeze_encoder_epochs=freeze,
            epochs=2, augment=False, size=(64, 64), batch_size=4, device="cpu", progress=False,
        )  # fmt: skip
        fit(cfg, on_epoch_end=look)
        config = json.loads((run / "config.json").read_text())
        assert config["mean"] == pytest.approx(IMAGENET_MEAN)
        assert config["std"] == pytest.approx(IMAGENET_STD)
        prefix = "net.encoder."
        return {k.removeprefix(prefix): v for k, v in seen.items() if k.startswith(prefix)}

    frozen, tuned = encoder_after_epoch_1(1), encoder_after_epoch_1(0)
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


def test_timm_encoder_loads_a_timm_checkpoint_file(smp, tmp_path: Path) -> None:
    """``tu-`` encoders are timm models: timm's own loader reads its checkpoint (classifier
    dropped, first convolution adapted to greyscale)."""
    import timm

    from pixelseg.models.encoders import load_encoder_weights

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "timm-resnet18.pth")
    model = create_model("smp-unet", encoder="tu-resnet18")
    load_encoder_weights(model, str(tmp_path / "timm-resnet18.pth"))
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["model.layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    grey = create_model("smp-unet", in_channels=1, encoder="tu-resnet18")
    load_encoder_weights(grey, str(tmp_path / "timm-resnet18.pth"))
    assert grey.encoder.state_dict()["model.conv1.weight"].shape[1] == 1
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match=r"other\.pth: not weights timm can load into"):
        load_encoder_weights(model, str(tmp_path / "other.pth"))
    with pytest.raises(ModelError, match=r"a tag in the name \(tu-<model>\.<tag>\)"):
        load_encoder_weights(model, "advprop")


def test_a_run_folder_can_seed_another_runs_encoder(smp, tmp_path: Path) -> None:
    """A whole model's weights (a run's model.safetensors) give their encoder part."""
    from safetensors.torch import save_file

    from pixelseg.models.encoders import load_encoder_weights

    first = create_model("smp-unet", encoder=TINY)
    save_file(first.state_dict(), tmp_path / "model.safetensors")
    second = create_model("smp-fpn", encoder=TINY)
    load_encoder_weights(second, str(tmp_path / "model.safetensors"))
    a, b = first.encoder.state_dict(), second.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ZOO)
def test_every_architecture_exports_to_onnx_or_says_why_not(smp, name: str) -> None:
    pytest.importorskip("onnxruntime")
    from pixelseg.errors import PixelsegError
    from pixelseg.inference.export import onnx_bytes
    from pixelseg.inference.onnx import open_session

    model = create_model(name, encoder=TINY).eval()
    if name in ("smp-pspnet", "smp-upernet"):  # adaptive pooling ONNX cannot express
        with pytest.raises(PixelsegError, match="cannot be exported to ONNX"):
            onnx_bytes(model, (1, 3, 128, 128), dynamic=True)
        return
    # PAN's traced graph holds at the traced size only (export_onnx refuses it as dynamic)
    size = (128, 128) if name == "smp-pan" else (67, 93)
    session = open_session(onnx_bytes(model, (1, 3, 128, 128), dynamic=name != "smp-pan"))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-4 * max(1.0, abs(expected).max())


def test_export_refuses_a_graph_that_computes_something_else(
    smp, tiny_data: Path, tmp_path: Path
) -> None:
    """PAN pads small inputs to 128 pixels, a size comparison the tracer would freeze: a
    dynamic export is refused (nothing written), a static one at the training size is
    checked and written."""
    pytest.importorskip("onnxruntime")
    from pixelseg.errors import PixelsegError
    from pixelseg.inference.export import export_onnx

    run = tmp_path / "run"
    args = ["train", str(tiny_data), "--model", "smp-pan", *TRAIN, "--epochs", "1"]
    assert main([*args, "--out", str(run)]) == 0
    with pytest.raises(PixelsegError, match="export without --dynamic"):
        export_onnx(run, dynamic=True)
    assert not (run / "model.onnx").exists()
    assert export_onnx(run).max_abs_diff < 1e-3
    assert (run / "model.onnx").is_file()


def test_segformer_with_its_mit_encoder_trains(smp, tiny_data: Path, tmp_path: Path) -> None:
    """mit_* encoders cannot be built on the meta device (their constructor reads values):
    the settings check falls back to a real build."""
    args = ["train", str(tiny_data), "--model", "smp-segformer", "--encoder", "mit_b0",
            "--size", "64", "--batch-size", "4", "--device", "cpu", "--epochs", "1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_kwargs"] == {"encoder": "mit_b0"}


def test_the_default_encoder_is_recorded_and_settings_are_checked(tmp_path: Path) -> None:
    from pixelseg.config import TrainConfig

    filled = TrainConfig(data="d", model="smp-unet").with_defaults()
    assert filled.model_kwargs == {"encoder": "resnet34"}
    assert TrainConfig(data="d", model="unet").with_defaults().model_kwargs == {}
    with pytest.raises(ValueError, match="fewer than epochs"):
        TrainConfig(data="d", model="smp-unet", epochs=3, freeze_encoder_epochs=3)
    with pytest.raises(ValueError, match="encoder_weights must be"):
        TrainConfig(data="d", model="smp-unet", encoder_weights=None)


def test_freezing_a_random_encoder_is_refused(smp, tiny_data: Path, tmp_path: Path, capsys) -> None:
    args = ["train", str(tiny_data), "--model", "smp-unet", "--freeze-encoder-epochs", "1",
            *TRAIN, "--epochs", "2", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 2
    assert "with --encoder-weights none the encoder is random" in capsys.readouterr().err


def test_a_zoo_run_resumes_exactly(smp, tiny_data: Path, tmp_path: Path) -> None:
    """Stopped after its first epoch (frozen encoder) and started again, a run with two
    optimizer groups ends with the weights of an uninterrupted one."""
    from safetensors.torch import load_file

    from pixelseg.config import TrainConfig
    from pixelseg.engine.train import fit

    weights = tmp_path / "resnet18.pth"
    _classifier_file(smp, weights)
    settings = dict(data=str(tiny_data), model="smp-linknet", model_kwargs={"encoder": TINY},
                    encoder_weights=str(weights), freeze_encoder_epochs=1, epochs=3, size=(64, 64),
                    batch_size=4, device="cpu", progress=False)  # fmt: skip

    class Crash(Exception):
        pass

    def crash_after_epoch_1(row: dict) -> None:
        if row["epoch"] == 1:
            raise Crash

    fit(TrainConfig(out=str(tmp_path / "full"), **settings))
    with pytest.raises(Crash):
        fit(TrainConfig(out=str(tmp_path / "part"), **settings), on_epoch_end=crash_after_epoch_1)
    fit(TrainConfig(out=str(tmp_path / "part"), **settings))  # resumes the unfinished run
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    part = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert part["finished"] and part["epoch"] == 3
    assert all(torch.equal(full["model"][k], part["model"][k]) for k in full["model"])
    assert load_file(tmp_path / "part" / "model.safetensors").keys() == full["model"].keys()


def test_two_process_training_of_a_model_with_unused_encoder_stages(
    smp, tiny_data: Path, tmp_path: Path
) -> None:
    """PSPNet leaves its encoder's deepest stages unused; DistributedDataParallel refuses
    parameters without gradients unless they are marked untrainable, as pixelseg does."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "pixelseg", "train", str(tiny_data), "--model",
               "smp-pspnet", "--encoder", TINY, "--size", "64", "--batch-size", "2",
               "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert state["finished"] and state["world_size"] == 2
