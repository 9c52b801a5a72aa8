"""Joint image + mask augmentation for the training split.

Geometry (flips, rotation, scale) is applied to image and mask together with one affine
grid; the image is sampled bilinearly and the mask with nearest-neighbour, so class
indices are never blended. Colour jitter touches the image only. Randomness comes from
torch's global generator, so a seeded run (and DataLoader workers, which torch seeds from
it) is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    """Random training-time transforms; each field is a strength (0 or False disables it)."""

    hflip: bool = True
    vflip: bool = True
    rotate_degrees: float = 20.0
    scale: float = 0.15  # zoom factor drawn from [1 - scale, 1 + scale]
    color: float = 0.15  # brightness/contrast/saturation jitter

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image``: (C, H, W) float in [0, 1]; ``mask``: (H, W) long. Returns new tensors."""
        if self.hflip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.vflip and torch.rand(()) < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)
        if self.rotate_degrees > 0 or self.scale > 0:
            image, mask = self._affine(image, mask)
        if self.color > 0:
            image = self._jitter(image)
        return image, mask

    def _affine(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = math.radians(
            float(torch.empty(()).uniform_(-self.rotate_degrees, self.rotate_degrees))
        )
        zoom = float(torch.empty(()).uniform_(1 - self.scale, 1 + self.scale))
        h, w = mask.shape
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        # affine_grid works in normalised coordinates; correct for the aspect ratio so a
        # rotation stays a rotation on non-square images.
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=image.dtype)
        grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
        image = F.grid_sample(
            image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )[0]
        mask = F.grid_sample(
            mask[None, None].to(image.dtype),
            grid,
            mode="nearest",
            padding_mode="reflection",
            align_corners=False,
        )[0, 0].long()
        return image, mask

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        def factor() -> float:
            return float(torch.empty(()).uniform_(1 - self.color, 1 + self.color))

        image = image * factor()  # brightness
        mean = image.mean()
        image = (image - mean) * factor() + mean  # contrast
        if image.shape[0] == 3:
            grey = image.mean(0, keepdim=True)
            image = (image - grey) * factor() + grey  # saturation
        return image.clamp(0, 1)
