"""MoCo v3 on Food-101, its 100-epoch ResNet-50 recipe, for a TPU v3-8 / v4-8 or 8 GPUs.

MoCo v3: Chen, Xie and He, 2021; facebookresearch/moco-v3 CONFIG.md.

  python main.py --config=configs/food101_mocov3.py --workdir=gs://BUCKET/mocov3

ResNet-50 with zero-initialised last BatchNorm scales in each residual block
(zero_init_residual=True); projector 2 layers 4096 -> 256 (last BatchNorm without affine),
predictor 2 layers 4096 -> 256; each view through the networks alone (per-view BatchNorm
statistics); momentum encoder and projector with momentum 0.99 -> 1 by cosine; symmetric
InfoNCE at temperature 1.0, each device's queries against the keys of all devices; LARS
(BatchNorm and biases excluded) lr 0.6 x batch / 256, weight decay 1e-6, 10 warm-up epochs
then cosine; BYOL's augmentation ranges with crops down to 20% of the image (--crop-min=.2).
100 epochs, batch 1024 (the recipe's 4096; lr scales linearly). Every value with its
source: docs/recipes.md.
"""

from configs import food101_byol


def get_config():
  config = food101_byol.get_config()  # Food-101, bfloat16, LARS, BYOL's augmentations.
  config.method = "mocov3"
  config.num_epochs = 100
  config.model.zero_init_residual = True
  config.augment.crop_area_range = (0.2, 1.0)
  config.mocov3.temperature = 1.0
  config.mocov3.base_target_momentum = 0.99
  config.mocov3.forward_views_separately = True
  config.optimizer.base_learning_rate = 0.6
  config.optimizer.weight_decay = 1e-6
  return config
