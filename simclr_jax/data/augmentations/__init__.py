"""SimCLR (and BYOL) augmentations as small, stateless tf.image functions.

Every random choice comes from an explicit `seed` tensor of shape (2,) (stateless ops), so
an element's views depend only on (config.seed, its position in the stream): the stream is
reproducible and resumable. Semantics follow torchvision, which the seed used:

  RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip(p)
  -> RandomApply([ColorJitter(b, c, s, h)], p)  (the four ops in random order)
  -> RandomGrayscale(p) -> GaussianBlur(kernel, sigma in [0.1, 2.0]) (applied with p)
  -> RandomSolarize(threshold 0.5 of [0, 1], p)  (BYOL's; p = 0, off, for SimCLR)
  -> uint8 (as the seed's PIL images; ToTensor and Normalize run on the accelerator,
     `precision.to_model_input`)

The two views may differ in their photometric settings (BYOL's asymmetric views):
`config.augment.view1` and `view2` override the shared fields (`settings.view_settings`).

The views of an image share one decode (`cropping.decode_for_crops`: for JPEGs, a crop-decode of
the bounding window of their crops). The uint8 crop is resized to float32 pixel values in
[0, 255]; the photometric ops then work on channels-first (3, H, W) floats in [0, 1], as
one XLA computation per view (`recipes._photometric_view`). Views come out as (S, S, 3) uint8: a
quarter of float32's bytes to batch, prefetch and send to the devices.

The package by concern:

  settings.py     `config.augment` and its per-view overrides, and their check
  randomness.py   stateless draws from explicit (2,) seeds
  cropping.py     decoding, the random resized crop, the (antialiased) resize
  photometric.py  flip, colour jitter, grayscale, blur, solarize (channels-first floats)
  recipes.py      the views the input pipeline asks for: `simclr_views`, `crop_flip_view`,
                  `eval_view`
"""
