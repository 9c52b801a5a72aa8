"""Tests for pixelseg.models: registry, lesson models, modern U-Net, any-size inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelseg.errors import PixelsegError
from pixelseg.models import (
    LessonSegNet,
    LessonUNet,
    ModelError,
    UNet,
    count_parameters,
    create_model,
    list_models,
    model_description,
    register_model,
)
from pixelseg.models import registry as registry_module
from pixelseg.models._padding import crop_padding, pad_to_multiple

# the native models; the zoo's smp-* models (an extra) are tested in test_zoo.py
ALL_MODELS = [name for name in list_models() if not name.startswith("smp-")]
ZOO_MODELS = [f"smp-{name}" for name in (
    "deeplabv3", "deeplabv3plus", "fpn", "linknet", "manet", "pan", "pspnet", "segformer",
    "unet", "unetplusplus", "upernet",
)]  # fmt: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register throwaway models without leaking them into other tests."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


# --- registry -------------------------------------------------------------------------


def test_builtin_models_are_registered_and_sorted() -> None:
    assert ALL_MODELS == ["lesson-segnet", "lesson-unet", "lite-unet", "lite-unet-fast", "unet"]
    assert list_models() == sorted(ALL_MODELS + ZOO_MODELS)
    for name in list_models():
        assert model_description(name)


def test_unknown_model_lists_valid_names() -> None:
    expected = f"Unknown model 'foo'. Valid models: {', '.join(list_models())}"
    with pytest.raises(ValueError) as excinfo:
        create_model("foo")
    assert str(excinfo.value) == expected
    with pytest.raises(ValueError, match="Unknown model 'foo'"):
        model_description("foo")


def test_model_error_is_a_value_error_and_a_pixelseg_error() -> None:
    # ValueError for callers; PixelsegError so the CLI prints it without a traceback.
    with pytest.raises(ModelError) as excinfo:
        create_model("nope")
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, PixelsegError)


@pytest.mark.usefixtures("isolated_registry")
def test_register_and_create_custom_model() -> None:
    @register_model("tiny", description="1x1 conv")
    def tiny(in_channels: int = 3, num_classes: int = 1, bias: bool = True) -> nn.Module:
        return nn.Conv2d(in_channels, num_classes, 1, bias=bias)

    assert "tiny" in list_models()
    assert model_description("tiny") == "1x1 conv"
    model = create_model("tiny", in_channels=2, num_classes=5, bias=False)
    assert count_parameters(model) == 10
    assert tiny(1, 1).in_channels == 1  # the decorator returns the builder unchanged


@pytest.mark.usefixtures("isolated_registry")
def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="'unet' is already registered"):

        @register_model("unet", description="impostor")
        def impostor(in_channels: int = 3, num_classes: int = 1) -> nn.Module:
            return nn.Identity()

    assert isinstance(create_model("unet", base_channels=4, depth=1), UNet)


@pytest.mark.parametrize(
    ("name", "kwargs", "bad"),
    [
        ("lesson-segnet", {"base_channels": 8}, "base_channels"),
        ("lesson-unet", {"dropout": 0.1}, "dropout"),
        ("unet", {"depht": 3}, "depht"),
    ],
)
def test_unexpected_kwargs_name_the_kwarg_and_model(name: str, kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=rf"Model '{name}' got unexpected .*{bad}"):
        create_model(name, **kwargs)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(
    "channels", [{"in_channels": 0}, {"num_classes": 0}, {"in_channels": -3}, {"in_channels": True}]
)
def test_bad_channel_counts_raise(name: str, channels: dict) -> None:
    with pytest.raises(ValueError, match="in_channels|num_classes"):
        create_model(name, **channels)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth"),
        ({"base_channels": 0}, "base_channels"),
        ({"depth": 2.0}, "depth"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"upsample": "nearest"}, "upsample"),
    ],
)
def test_unet_rejects_bad_kwargs(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("unet", **kwargs)


def test_count_parameters_counts_only_trainable() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # 8 + 3 parameters
    assert count_parameters(model) == 11
    model[0].requires_grad_(False)
    assert count_parameters(model) == 3


# --- lesson models --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"), [("lesson-segnet", 780_865), ("lesson-unet", 974_417)]
)
def test_lesson_parameter_counts_match_the_notebook(name: str, expected: int) -> None:
    assert count_parameters(create_model(name, in_channels=3, num_classes=1)) == expected


@pytest.mark.parametrize(
    ("cls", "dec_in"), [(LessonSegNet, (256, 128, 64, 32)), (LessonUNet, (384, 192, 96, 48))]
)
def test_lesson_layer_structure_matches_the_notebook(cls: type[nn.Module], dec_in: tuple) -> None:
    model = cls(in_channels=3, num_classes=1)
    encoder = [model.enc_conv0, model.enc_conv1, model.enc_conv2, model.enc_conv3]
    assert [c.out_channels for c in encoder] == [16, 32, 64, 128]
    assert [c.in_channels for c in encoder] == [3, 16, 32, 64]
    assert [model.bn0.num_features, model.bn3.num_features] == [16, 128]
    assert (model.bottleneck_conv.in_channels, model.bottleneck_conv.out_channels) == (128, 256)
    decoder = [model.dec_conv0, model.dec_conv1, model.dec_conv2, model.dec_conv3]
    assert tuple(c.in_channels for c in decoder) == dec_in
    assert [c.out_channels for c in decoder] == [128, 64, 32, 1]
    assert model.dec_conv3.kernel_size == (1, 1)
    assert isinstance(model.upsample0, nn.UpsamplingBilinear2d)  # align_corners=True
    assert model.stride == 16
    # The printed structure is what a learner compares with the notebook.
    printed = repr(model)
    assert f"(dec_conv0): Conv2d({dec_in[0]}, 128, kernel_size=(3, 3)" in printed
    assert "(bottleneck_conv): Conv2d(128, 256, kernel_size=(3, 3)" in printed
    assert "Sigmoid" not in printed


@pytest.mark.parametrize("name", ["lesson-segnet", "lesson-unet"])
def test_lesson_models_return_unbounded_logits(name: str) -> None:
    model = create_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.dec_conv3.bias.fill_(5.0)
        assert model(x).max() > 1.0  # a sigmoid could never exceed 1
        model.dec_conv3.bias.fill_(-5.0)
        assert model(x).min() < 0.0  # ... nor go below 0


def test_lesson_unet_skips_are_pre_pool_features() -> None:
    model = LessonUNet().eval()
    x = torch.randn(1, 3, 32, 32)
    _, skips = model._encode(x)
    assert [tuple(s.shape[1:]) for s in skips] == [
        (16, 32, 32),
        (32, 16, 16),
        (64, 8, 8),
        (128, 4, 4),
    ]
    expected_s0 = model.bn0(model.act0(model.enc_conv0(x)))
    torch.testing.assert_close(skips[0], expected_s0)


# --- every registered model -----------------------------------------------------------


def _small_kwargs(name: str) -> dict:
    # Keep the default U-Net's shape behaviour but a fraction of its cost.
    return {"base_channels": 8} if name == "unet" else {}


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_forward_shape(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes, **_small_kwargs(name))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, num_classes, 64, 64)
    assert isinstance(model.stride, int)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_configuration_forward_shape(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 1, 32, 48)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_backward_gives_finite_gradients_to_every_parameter(name: str) -> None:
    model = create_model(name, num_classes=2, **_small_kwargs(name))
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("size", [(67, 93), (1, 1), (16, 17)])
def test_any_input_size_gives_same_size_output(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, num_classes=3, **_small_kwargs(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 3, *size)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_single_channel_input(name: str) -> None:
    model = create_model(name, in_channels=1, **_small_kwargs(name))
    assert model(torch.randn(2, 1, 40, 24)).shape == (2, 1, 40, 24)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_saved_weights_reload_to_the_same_output(name: str, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model = create_model(name, num_classes=2, **_small_kwargs(name))
    model(torch.randn(2, 3, 32, 32))  # move the BN statistics off their initial values
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    again = create_model(name, num_classes=2, **_small_kwargs(name))
    again.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_output_is_deterministic(name: str) -> None:
    model = create_model(name, **_small_kwargs(name))
    model(torch.randn(2, 3, 32, 32))  # one training step's worth of BN statistics
    model.eval()
    x = torch.randn(2, 3, 37, 29)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# --- modern U-Net ---------------------------------------------------------------------


def test_unet_width_changes_parameter_count() -> None:
    assert count_parameters(create_model("unet", base_channels=8)) < count_parameters(
        create_model("unet", base_channels=32)
    )


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_unet_depth_sets_stride(depth: int) -> None:
    model = create_model("unet", base_channels=4, depth=depth).eval()
    assert model.stride == 2**depth
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 35)).shape == (1, 1, 33, 35)


def test_unet_transpose_upsampling() -> None:
    model = create_model("unet", base_channels=8, upsample="transpose")
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert model(torch.randn(2, 3, 45, 30)).shape == (2, 1, 45, 30)


def test_unet_dropout_is_inactive_in_eval() -> None:
    model = create_model("unet", base_channels=8, dropout=0.5).eval()
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# --- padding helper -------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (17, 31), (1, 1)])
def test_pad_then_crop_round_trips(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    padded, padding = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert torch.equal(crop_padding(padded, padding), x)
