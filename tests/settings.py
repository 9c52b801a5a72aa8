"""Settings shared by the tests: a tiny U-Net that trains in about a second, and the run
config of a hand-made model."""

from pixelseg.runconfig import RunConfig

FAST = {
    "model": "unet",
    "model_kwargs": {"base_channels": 8, "depth": 2},
    "size": 32,
    "batch_size": 4,
    "lr": 3e-3,
    "progress": False,
}
# the same run from the command line (progress bars are off when not on a terminal)
FAST_ARGS = ["--model", "unet", "--model-arg", "base_channels=8", "--model-arg", "depth=2",
             "--size", "32", "--batch-size", "4", "--lr", "3e-3"]  # fmt: skip


def run_config(size: list[int], num_classes: int = 1, **values) -> RunConfig:
    """The config of a 3-channel run of ``size`` normalised by mean 0.5, std 0.25."""
    return RunConfig(model="test", in_channels=3, num_classes=num_classes, size=size,
                     mean=[0.5] * 3, std=[0.25] * 3, **values)  # fmt: skip
