"""View presets of the masked-modeling family (MAE, SimMIM, I-JEPA, MaskFeat, BEiT): one view
per image at the image's size, each as its paper's pre-training transform. Registered on import
(``selfsup.data.views`` imports this module); iBOT's multi-crop preset stays beside DINO's in
:mod:`selfsup.data.views`.
"""

from __future__ import annotations

from selfsup import registry
from selfsup.config import ViewConfig


@registry.register(
    "preset",
    "mae",
    description="one view: random resized crop 0.2-1 and horizontal flip, no colour distortion",
    reference="He et al. 2022, Masked Autoencoders Are Scalable Vision Learners, appendix A.1",
)
def mae_views(image_size: int) -> list[ViewConfig]:
    """MAE pre-training (appendix A.1, facebookresearch/mae ``main_pretrain.py``:
    ``RandomResizedCrop(scale=(0.2, 1.0))``, ``RandomHorizontalFlip``): one view per image, no
    colour jitter, grayscale nor blur ("MAE works well using cropping-only augmentation",
    sec. 4.1). The view has the image's size."""
    return [ViewConfig(n=1, size=image_size, scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0,
                       blur_p=0.0)]


@registry.register(
    "preset",
    "simmim",
    description="one view: random resized crop 0.67-1 and horizontal flip, no colour distortion",
    reference="Xie et al. 2022, SimMIM: A Simple Framework for Masked Image Modeling, sec. 4.1",
)
def simmim_views(image_size: int) -> list[ViewConfig]:
    """SimMIM pre-training (sec. 4.1; microsoft/SimMIM ``data/data_simmim.py``
    ``SimMIMTransform``: ``RandomResizedCrop(scale=(0.67, 1.), ratio=(3/4, 4/3))``,
    ``RandomHorizontalFlip``): one view per image, no colour jitter, grayscale nor blur. The view
    has the image's size."""
    return [ViewConfig(n=1, size=image_size, scale=(0.67, 1.0), jitter_p=0.0, grayscale_p=0.0,
                       blur_p=0.0)]


@registry.register(
    "preset",
    "ijepa",
    description="one view: random resized crop 0.3-1 only (no flip, no colour distortion)",
    reference="Assran et al. 2023, I-JEPA, sec. 4 and configs/in1k_vith14_ep300.yaml",
)
def ijepa_views(image_size: int) -> list[ViewConfig]:
    """I-JEPA pre-training (facebookresearch/ijepa ``configs/in1k_vith14_ep300.yaml``:
    ``crop_scale: [0.3, 1.0]``, ``use_horizontal_flip: false``, no colour jitter nor blur): one
    view per image. The view has the image's size."""
    return [ViewConfig(n=1, size=image_size, scale=(0.3, 1.0), hflip_p=0.0, jitter_p=0.0,
                       grayscale_p=0.0, blur_p=0.0)]


@registry.register(
    "preset",
    "maskfeat",
    description="one view: random resized crop 0.5-1 and horizontal flip, no colour distortion",
    reference="Wei et al. 2022, MaskFeat, configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml",
)
def maskfeat_views(image_size: int) -> list[ViewConfig]:
    """MaskFeat image pre-training (facebookresearch/SlowFast
    ``configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml``: ``TRAIN_JITTER_SCALES_RELATIVE: [0.5,
    1.0]``, ``TRAIN_JITTER_ASPECT_RELATIVE: [0.75, 1.3333]``, ``COLOR_JITTER: None``, through
    ``transforms_imagenet_train`` with its horizontal flip): one view per image, no colour
    jitter, grayscale nor blur. The view has the image's size."""
    return [ViewConfig(n=1, size=image_size, scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0,
                       blur_p=0.0)]


@registry.register(
    "preset",
    "beit",
    description="one view: colour jitter 0.4 (always), horizontal flip, random resized crop "
    "0.08-1",
    reference="Bao et al. 2022, BEiT: BERT Pre-Training of Image Transformers, sec. 2.5 and "
    "microsoft/unilm beit/datasets.py",
)
def beit_views(image_size: int) -> list[ViewConfig]:
    """BEiT pre-training (microsoft/unilm ``beit/datasets.py`` ``DataAugmentationForBEiT``:
    ``ColorJitter(0.4, 0.4, 0.4)`` applied to every image, ``RandomHorizontalFlip(0.5)``,
    ``RandomResizedCropAndInterpolationWithTwoPic`` with scale (0.08, 1) and ratio (3/4, 4/3)):
    one view per image at the image's size, no hue jitter, grayscale nor blur. The reference
    jitters before cropping; here after (the batched pipeline's order)."""
    return [ViewConfig(n=1, size=image_size, scale=(0.08, 1.0), jitter_p=1.0, brightness=0.4,
                       contrast=0.4, saturation=0.4, hue=0.0, grayscale_p=0.0, blur_p=0.0)]
