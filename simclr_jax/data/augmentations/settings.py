"""The augmentation settings: `config.augment`'s shared fields, each view's overrides
(`view_settings`) and their check (`check_augment_config`, a ConfigError for a bad one)."""

from __future__ import annotations

import dataclasses

from simclr_jax import config_checks


def blur_kernel_size(image_size: int) -> int:
  """The seed's kernel: int(10% of the image size), made odd by adding one if even."""
  kernel = int(0.1 * image_size)
  return kernel + 1 if kernel % 2 == 0 else kernel


# The fields `config.augment.view1` and `view2` may set (None: the shared field's value).
PER_VIEW_FIELDS = ("flip_probability", "color_jitter_strength", "color_jitter",
                   "color_jitter_probability", "grayscale_probability", "blur_probability",
                   "blur_sigma_range", "solarize_probability")
PROBABILITY_FIELDS = ("flip_probability", "color_jitter_probability",
                      "grayscale_probability", "blur_probability", "solarize_probability")


@dataclasses.dataclass(frozen=True)
class ViewAugment:
  """The photometric settings of one view, resolved (`view_settings`).

  color_jitter: ColorJitter's (brightness, contrast, saturation, hue).
  """
  flip_probability: float
  color_jitter: tuple[float, float, float, float]
  color_jitter_probability: float
  grayscale_probability: float
  blur_probability: float
  blur_sigma_range: tuple[float, float]
  solarize_probability: float


def strength_jitter(strength: float) -> tuple[float, float, float, float]:
  """SimCLR's colour strength s -> ColorJitter (0.8s, 0.8s, 0.8s, 0.2s)."""
  return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


def _view_settings(aug, overrides) -> ViewAugment:
  """`aug`'s shared fields with the non-None fields of `overrides` (a view block) in their
  place. Colour jitter: the view's explicit color_jitter, else its color_jitter_strength,
  else the shared color_jitter, else the shared strength (the most specific set wins)."""
  overrides = overrides if overrides is not None else {}

  def pick(name, default=None):
    value = overrides.get(name)
    return aug.get(name, default) if value is None else value

  def jitter_of(block):
    if block.get("color_jitter") is not None:
      return tuple(float(x) for x in block["color_jitter"])
    if block.get("color_jitter_strength") is not None:
      return strength_jitter(block["color_jitter_strength"])
    return None

  return ViewAugment(
      flip_probability=pick("flip_probability"),
      color_jitter=jitter_of(overrides) or jitter_of(aug),
      color_jitter_probability=pick("color_jitter_probability"),
      grayscale_probability=pick("grayscale_probability"),
      blur_probability=pick("blur_probability"),
      blur_sigma_range=tuple(pick("blur_sigma_range")),
      solarize_probability=pick("solarize_probability", 0.0))


def view_settings(aug) -> tuple[ViewAugment, ViewAugment]:
  """`config.augment` -> the settings of view 1 and view 2: the shared fields, overridden
  by the set (non-None) fields of `aug.view1` and `aug.view2`. A config without these
  blocks (or without solarize_probability or color_jitter) gives both views the shared
  settings (solarize off)."""
  return (_view_settings(aug, aug.get("view1")), _view_settings(aug, aug.get("view2")))


def check_augment_config(aug) -> None:
  """The one check of `config.augment`: ConfigError (a one-line message naming the field)
  for the crop (0 < low <= high <= 1 of the area, increasing positive ratios), the image
  size, the evaluation crop, and the photometric fields, shared or per view
  (`PER_VIEW_FIELDS`): probabilities in [0, 1], colour strength >= 0, color_jitter four
  numbers >= 0 with the hue <= 0.5 (torchvision's ColorJitter's limit), blur_sigma_range
  0 < low <= high."""
  require = config_checks.require
  low, high = aug.crop_area_range
  require(0 < low <= high <= 1, f"augment.crop_area_range must satisfy 0 < low <= high <= 1, "
          f"got {aug.crop_area_range}.")
  require(0 < aug.crop_ratio_range[0] <= aug.crop_ratio_range[1],
          f"augment.crop_ratio_range must be increasing and positive, got "
          f"{aug.crop_ratio_range}.")
  require(aug.image_size > 0, f"augment.image_size must be positive, got {aug.image_size}.")
  require(0 < aug.eval_crop_fraction <= 1,
          f"augment.eval_crop_fraction must be in (0, 1], got {aug.eval_crop_fraction}.")

  def check(prefix, block, name):
    value = block.get(name)
    field = f"augment.{prefix}{name}"
    if value is None:
      # Unset: the shared value (or the strength).
      require(bool(prefix) or name == "color_jitter", f"{field} must be set, got None.")
    elif name in PROBABILITY_FIELDS:
      require(0 <= value <= 1, f"{field} must be in [0, 1], got {value}.")
    elif name == "color_jitter_strength":
      require(value >= 0, f"{field} must be >= 0, got {value}.")
    elif name == "color_jitter":
      require(len(value) == 4 and all(x >= 0 for x in value) and value[3] <= 0.5,
              f"{field} must be (brightness, contrast, saturation, hue), each >= 0 and hue "
              f"<= 0.5, got {value}.")
    elif name == "blur_sigma_range":
      require(len(value) == 2 and 0 < value[0] <= value[1],
              f"{field} must be (low, high) with 0 < low <= high, got {value}.")

  for name in PER_VIEW_FIELDS:
    if name != "solarize_probability" or name in aug:
      check("", aug, name)
  for view in ("view1", "view2"):
    block = aug.get(view)
    if block is None:
      continue
    unknown = sorted(set(block.keys()) - set(PER_VIEW_FIELDS))
    require(not unknown, f"augment.{view}.{unknown[0] if unknown else ''} is not a per-view "
            f"setting; those are {', '.join(PER_VIEW_FIELDS)}.")
    for name in PER_VIEW_FIELDS:
      check(f"{view}.", block, name)
