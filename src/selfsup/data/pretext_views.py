"""View presets of the pretext and generative tasks (rotation, jigsaw, context prediction,
colorization, Exemplar-CNN, counting, jigsaw clustering, autoencoders, context encoders).

Each preset is the paper's data augmentation before the task's own construction (rotating,
tiling, masking, converting to Lab), which the method does on the device in ``training_step``;
presets registered here are listed by ``selfsup list presets``.
"""

from __future__ import annotations

from selfsup import registry
from selfsup.config import ViewConfig


def _whole_image(image_size: int) -> list[ViewConfig]:
    """One view: the whole image at its size, no flip, no colour change (the raw inputs of the
    autoencoder papers)."""
    return [ViewConfig(n=1, size=image_size, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0,
                       jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)]


@registry.register(
    "preset",
    "autoencoder",
    description="one view: the whole image, no augmentation",
    reference="Vincent et al. 2008, Extracting and Composing Robust Features with Denoising "
    "Autoencoders, experiments (raw MNIST pixels)",
)
def autoencoder_views(image_size: int) -> list[ViewConfig]:
    """The autoencoder's input (Vincent et al. 2008, experiments; lisa-lab ``dA.py``): the image
    itself, no crop, flip or colour change."""
    return _whole_image(image_size)


@registry.register(
    "preset",
    "denoising_autoencoder",
    description="one view: the whole image, no augmentation (the corruption is the method's)",
    reference="Vincent et al. 2008, Extracting and Composing Robust Features with Denoising "
    "Autoencoders, experiments (raw MNIST pixels)",
)
def denoising_autoencoder_views(image_size: int) -> list[ViewConfig]:
    """The denoising autoencoder's clean input, as :func:`autoencoder_views`; the corruption
    ``q_D`` is drawn by the method on the device."""
    return _whole_image(image_size)


# context-encoder data/donkey_folder.lua: shorter side resized to loadSize 350, a random
# fineSize 128 crop at that scale, so the crop's side is 128 / 350 of the shorter side
_CE_CROP_AREA = (128 / 350) ** 2


@registry.register(
    "preset",
    "context_encoder",
    description="one view: a random square crop of (128/350)^2 of the image area and a "
    "horizontal flip, no colour change",
    reference="Pathak et al. 2016, Context Encoders: Feature Learning by Inpainting, and "
    "pathak22/context-encoder data/donkey_folder.lua",
)
def context_encoder_views(image_size: int) -> list[ViewConfig]:
    """The context encoder's training crops (pathak22/context-encoder ``donkey_folder.lua``
    ``trainHook``: the image's shorter side resized to 350 px, a random 128 x 128 crop, a
    horizontal flip with probability 0.5, no colour jitter): a square crop whose side is 128/350
    of the image's (area ``(128/350)^2``, about 13%), resized to the view size. Small datasets
    whose images are already at the training size may prefer whole-image views
    (``view_args.scale=[1.0, 1.0]``)."""
    return [ViewConfig(n=1, size=image_size, scale=(_CE_CROP_AREA, _CE_CROP_AREA),
                       ratio=(1.0, 1.0), hflip_p=0.5, jitter_p=0.0, grayscale_p=0.0,
                       blur_p=0.0)]


@registry.register(
    "preset",
    "jigsaw",
    description="one view: the whole image, no flip, 30% grayscale (RGB), no colour jitter; the "
    "method cuts the 3x3 tiles",
    reference="Noroozi & Favaro 2016, Unsupervised Learning of Visual Representations by "
    "Solving Jigsaw Puzzles, sec. 3.3",
)
def jigsaw_views(image_size: int) -> list[ViewConfig]:
    """The Jigsaw puzzle's image (MehdiNoroozi/JigsawPuzzleSolver ``train_val_cfn_jps.prototxt``:
    the central 255-px square, ``crop_size: 255``, ``mirror: false``, no colour jitter): the
    whole image at its size, no flip. Sec. 3.3 trains on 30% grey images against chromatic
    aberration (``grayscale_p=0.3``, RGB only); the tiles, their gaps and per-tile normalisation
    are cut by :class:`selfsup.methods.jigsaw.Jigsaw` on the device."""
    return [ViewConfig(n=1, size=image_size, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0,
                       jitter_p=0.0, grayscale_p=0.3, blur_p=0.0)]


@registry.register(
    "preset",
    "context_prediction",
    description="one view: a random square crop of 1/3 to all of the image (scale jitter), no "
    "flip, no colour change; the method samples the patch grid",
    reference="Doersch et al. 2015, Unsupervised Visual Representation Learning by Context "
    "Prediction, sec. 3-4, and cdoersch/deepcontext train.py",
)
def context_prediction_views(image_size: int) -> list[ViewConfig]:
    """Context prediction's image (cdoersch/deepcontext ``train.py`` ``imgloader``: each image
    resized to a random 150k-450k pixels, aspect kept, no flip nor colour jitter, then a patch
    grid at a random offset): a random square crop of 1/3 to all of the image area (the 3x
    range of the reference's pixel counts, seen from the fixed-size patch grid), resized to the
    view size. Patches, gaps, jitter and the colour countermeasures are drawn by
    :class:`selfsup.methods.context_prediction.ContextPrediction` on the device."""
    return [ViewConfig(n=1, size=image_size, scale=(1 / 3, 1.0), ratio=(1.0, 1.0), hflip_p=0.0,
                       jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)]


@registry.register(
    "preset",
    "colorization",
    description="one view: a random square crop of 11/16 of the side (176 of 256 px) at native "
    "scale and horizontal flip, no colour change",
    reference="Zhang et al. 2016, Colorful Image Colorization, and richzhang/colorization "
    "models/colorization_train_val_v2.prototxt",
)
def colorization_views(image_size: int) -> list[ViewConfig]:
    """Colorization's training crops (richzhang/colorization
    ``models/colorization_train_val_v2.prototxt``: 176-px random crops of the 256-px images,
    ``crop_size: 176``, ``mirror: true``, no colour augmentation, which would change the target):
    a random square crop of ``round(11/16 x image_size)`` px (176/256 = 11/16) kept at native
    scale (the crop's area fraction is fixed, so no resizing), flipped with p 0.5. Evaluation
    sees the whole images, as the reference validates on full 256-px images."""
    size = max(1, round(image_size * 176 / 256))
    area = (size / image_size) ** 2
    return [ViewConfig(n=1, size=size, scale=(area, area), ratio=(1.0, 1.0), hflip_p=0.5,
                       jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)]


@registry.register(
    "preset",
    "rotation",
    description="one view: the whole image and a horizontal flip (the padded random crop is "
    "the method's), no colour change",
    reference="Gidaris et al. 2018, Unsupervised Representation Learning by Predicting Image "
    "Rotations, and gidariss/FeatureLearningRotNet dataloader.py (CIFAR-10)",
)
def rotation_views(image_size: int) -> list[ViewConfig]:
    """RotNet's CIFAR-10 augmentation (gidariss/FeatureLearningRotNet ``dataloader.py``:
    ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, no colour jitter): one view per
    image at the image's size, the whole image (crop scale and ratio 1) flipped with p 0.5. The
    padded random crop has no ViewConfig counterpart and is drawn by
    :class:`selfsup.methods.rotation.Rotation` (``crop_padding``) before it rotates the view."""
    return [ViewConfig(n=1, size=image_size, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.5,
                       jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)]


@registry.register(
    "preset",
    "exemplar",
    description="one view: the image unchanged (Exemplar-CNN draws its own seed patch and "
    "transformations)",
    reference="Dosovitskiy et al. 2014/2016, Discriminative Unsupervised Feature Learning with "
    "(Exemplar) Convolutional Neural Networks, sec. 2",
)
def exemplar_views(image_size: int) -> list[ViewConfig]:
    """Exemplar-CNN (sec. 2): the seed patch is cut from the original image and every random
    transformation (translation, scaling, rotation, contrast, colour) is drawn by
    :class:`selfsup.methods.exemplar.Exemplar` on the device, so the view is the whole image at
    its size with no augmentation (crop scale and ratio 1, no flip nor colour change); a
    deterministic view is what keeps each image's seed patch at the same place at every visit."""
    return _whole_image(image_size)


@registry.register(
    "preset",
    "counting",
    description="one view: a random square crop of 7/8 of the side (224 of 256), no flip nor "
    "colour change (the method greys 67% of the steps)",
    reference="Noroozi, Pirsiavash & Favaro 2017, Representation Learning by Learning to Count, "
    "sec. 4 (shortcuts)",
)
def counting_views(image_size: int) -> list[ViewConfig]:
    """Learning to count (sec. 4, "The network recognizes the downsampling style": "we randomly
    crop a 224 x 224 region from a 256 x 256 image"): one view per image at the image's size, a
    square crop of (224 / 256)^2 of the area at a random place, resized back to the image's size
    (the dataset's image stands for the 256-px image). No flip nor colour jitter is named there;
    the 67% grey conversion, which must be the same for every term of the loss, is drawn by
    :class:`selfsup.methods.counting.Counting` once per step."""
    return [ViewConfig(n=1, size=image_size, scale=(0.765625, 0.765625), ratio=(1.0, 1.0),
                       hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)]


@registry.register(
    "preset",
    "jigsaw_clustering",
    description="4 full-size views per image, one per 2 x 2 tile: MoCo v2 colour jitter 0.4 "
    "(p 0.8), grayscale 0.2, blur p 0.5; no crop nor flip (the method crops each tile)",
    reference="Chen, Liu & Jia 2021, Jigsaw Clustering, and dvlab-research/JigsawClustering "
    "main.py",
)
def jigsaw_clustering_views(image_size: int) -> list[ViewConfig]:
    """Jigsaw clustering (dvlab-research/JigsawClustering ``main.py``: each of the 4 tile crops
    goes through ``RandomResizedCrop(112, scale=(0.2, 1))``, ``ColorJitter(0.4, 0.4, 0.4, 0.1)``
    p 0.8, ``RandomGrayscale(0.2)``, blur p 0.5 with sigma 0.1-2, ``RandomHorizontalFlip``): one
    group of 4 whole views at the image's size (``n`` = tiles per image; ``view_args.n=9`` for
    ``method_args.grid=3``), view ``j`` giving tile ``j`` its own colour jitter, grayscale and
    blur (sigma 0.1-2 px at 224 px, scaled with the size as the other presets). The crop inside
    each tile's region and the flip are drawn by
    :class:`selfsup.methods.jigsaw_clustering.JigsawClustering` (``tile_scale``,
    ``tile_hflip_p``), so this group keeps the whole image (scale and ratio 1) unflipped; a
    ``view_args.scale`` below 1 would crop twice."""
    return [ViewConfig(n=4, size=image_size, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0,
                       jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                       grayscale_p=0.2, blur_p=0.5)]
