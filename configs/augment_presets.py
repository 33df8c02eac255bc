"""Augmentation recipes other than SimCLR's, set on a config's `augment` block.

Pure ml_collections: the fields are those of configs/default.py's `config.augment`.
"""


def use_byol_augmentations(augment_config):
  """Sets BYOL's asymmetric views (Grill et al., 2020, Appendix B), which MoCo v3 and VICReg
  also use, on `augment_config` (a config's `augment` block) and returns it:

  - both views: flip p 0.5; ColorJitter (0.4, 0.4, 0.2, 0.1) with p 0.8 (replacing the
    strength's); grayscale p 0.2; Gaussian blur sigma uniform in (0.1, 2.0);
  - view 1: blur p 1.0, no solarize; view 2: blur p 0.1, solarize p 0.2.

  The crop (and image size, resize, normalisation) stay as the config has them; BYOL's is
  the default RandomResizedCrop, area (0.08, 1.0), ratio (3/4, 4/3).

  The jitter ops are torchvision's ColorJitter (multiplicative brightness, contrast about the
  grayscale mean), as MoCo v3's and VICReg's; BYOL's own are TensorFlow's (additive
  brightness, per-channel contrast mean): same ranges and probabilities, other semantics.
  """
  aug = augment_config
  aug.flip_probability = 0.5
  aug.color_jitter = (0.4, 0.4, 0.2, 0.1)
  aug.color_jitter_probability = 0.8
  aug.grayscale_probability = 0.2
  aug.blur_sigma_range = (0.1, 2.0)
  aug.solarize_probability = 0.0
  aug.view1.blur_probability = 1.0
  aug.view1.solarize_probability = 0.0
  aug.view2.blur_probability = 0.1
  aug.view2.solarize_probability = 0.2
  return aug
