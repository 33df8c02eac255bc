"""VICReg on Food-101, its 100-epoch ResNet-50 command, for a TPU v3-8 / v4-8 or 8 GPUs.

VICReg: Bardes, Ponce and LeCun, 2022; facebookresearch/vicreg.

  python main.py --config=configs/food101_vicreg.py --workdir=gs://BUCKET/vicreg

ResNet-50 with zero-initialised last BatchNorm scales in each residual block; expander
8192-8192-8192 (the last Linear without bias); each view through the networks alone
(per-view BatchNorm statistics); invariance 25, variance 25, covariance 1, variance and
covariance over the global batch; LARS (BatchNorm and biases excluded) lr 0.3 x batch /
256 (README.md:72's 100-epoch command; 0.2 is the 1000-epoch one's), weight decay 1e-6, 10
warm-up epochs then cosine to 0 (VICReg's ends at 0.001 x the peak: a difference kept, the
project's one schedule); BYOL's augmentation ranges. 100 epochs, batch 1024 (the command's
512; lr scales linearly). Every value with its source: docs/recipes.md.
"""

from configs import food101_byol


def get_config():
  config = food101_byol.get_config()  # Food-101, bfloat16, LARS, BYOL's augmentations.
  config.method = "vicreg"
  config.num_epochs = 100
  config.model.zero_init_residual = True
  config.vicreg.forward_views_separately = True
  config.optimizer.base_learning_rate = 0.3  # Cosine to 0, not VICReg's 0.001 x peak.
  config.optimizer.weight_decay = 1e-6
  return config
