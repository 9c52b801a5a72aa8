"""Training settings shared by the tests: a tiny U-Net that trains in about a second."""

FAST = {
    "model": "unet",
    "model_kwargs": {"base_channels": 8, "depth": 2},
    "size": 32,
    "batch_size": 4,
    "lr": 3e-3,
    "progress": False,
}
