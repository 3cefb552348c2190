"""Natural RGB photographs bundled with scikit-image (no download): a small offline stand-in for
DIV2K denoising (Sect. 4.2) for smoke runs and tests.

Split by image, fixed (``val_fraction`` does not apply to six images):
train = astronaut, coffee, motorcycle (left view of ``stereo_motorcycle``), immunohistochemistry;
val = rocket; test = chelsea. Left out: hubble_deep_field and retina (mostly black),
colorwheel and logo (synthetic), the greyscale images (the denoisers take RGB), and ``cat``
(the same image as chelsea). Default patches: 32×32, 256 random ones per training epoch,
every tile of the val/test images for evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from wconv.data.split import NOISE_SEEDS, NoisyPatches, NoisyTiles, tiles
from wconv.data.task import DatasetError, TaskData

IMAGES = {
    "train": ("astronaut", "coffee", "motorcycle", "immunohistochemistry"),
    "val": ("rocket",),
    "test": ("chelsea",),
}
PATCH_SIZE = 32
PATCHES_PER_EPOCH = 256


def _image(name: str) -> np.ndarray:
    import skimage.data

    try:
        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()
    except Exception as e:
        raise DatasetError(f"scikit-image's bundled image {name!r} failed to load ({type(e).__name__}: {e}): "
                           "reinstall scikit-image (>= 0.22) in this environment") from None


def _tensor(name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(_image(name)[..., :3])).permute(2, 0, 1).contiguous()


def check() -> None:
    for names in IMAGES.values():
        for name in names:
            _image(name)


def load(*, device, noise_sigma: float, patch_size: int | None, hflip: bool, limit: int | None,
         patches_per_epoch: int | None, tiles_per_image: int | None) -> TaskData:
    p = patch_size or PATCH_SIZE
    per_epoch = patches_per_epoch or PATCHES_PER_EPOCH
    images = {split: [_tensor(n) for n in names[:limit]] for split, names in IMAGES.items()}
    for split, imgs in images.items():
        for name, img in zip(IMAGES[split], imgs):
            if min(img.shape[-2:]) < p:
                raise ValueError(f"patch_size {p} is larger than image {name!r} {tuple(img.shape[-2:])}")

    def eval_split(split: str) -> NoisyTiles:
        clean = torch.cat([tiles(img, p, tiles_per_image) for img in images[split]])[:limit]
        return NoisyTiles(clean, sigma=noise_sigma, seed=NOISE_SEEDS[split], device=device,
                          names=IMAGES[split][:limit])

    train = NoisyPatches(
        [img.to(device) for img in images["train"]], patch_size=p,
        patches_per_epoch=min(per_epoch, limit or per_epoch), sigma=noise_sigma, hflip=hflip,
        seed=NOISE_SEEDS["train"], names=IMAGES["train"][:limit],
    )
    return TaskData("natural", "denoising", in_channels=3, num_classes=None, image_size=p,
                    train=train, val=eval_split("val"), test=eval_split("test"))
