"""BYOL on Food-101, its 300-epoch ResNet-50 recipe, for a TPU v3-8 / v4-8 or 8 GPUs.

BYOL: Grill et al., 2020, "Bootstrap Your Own Latent".

  python main.py --config=configs/food101_byol.py --workdir=gs://BUCKET/byol

BYOL's 300-epoch preset, whole (byol/configs/byol.py: lr 0.3 x batch / 256, weight decay
1e-6, tau_base 0.99; the 1000-epoch preset is 0.2 / 1.5e-6 / 0.996): ResNet-50 with
BatchNorm scales initialised to 1 (the paper's; BYOL's README says its results were
obtained without the code's zero-initialised block scales); projector 4096 -> 256 and
predictor 4096 -> 256, each Linear-BatchNorm-ReLU-Linear; each view through the networks
alone (per-view BatchNorm statistics); target = EMA of the online encoder and projector,
tau from 0.99 to 1 by cosine; the symmetric loss; LARS with BatchNorm and biases out of
weight decay and the trust ratio, 10 warm-up epochs then cosine to 0; BYOL's augmentation
ranges (configs/augment_presets.py). Batch 1024 (the paper's 4096; the rate scales
linearly). Every value with its source: docs/recipes.md.
"""

from configs import augment_presets, default


def get_config():
  config = default.get_config()
  config.method = "byol"
  config.dataset = "food101"
  config.compute_dtype = "bfloat16"  # Mixed precision on TPU and GPU.
  config.eval_split = "validation"
  config.batch_size = 1024
  config.num_epochs = 300
  config.model.zero_init_residual = False  # BYOL README.md:109-111: the paper's gamma = 1.
  config.byol.base_target_momentum = 0.99
  config.byol.forward_views_separately = True
  config.optimizer.name = "lars"
  config.optimizer.base_learning_rate = 0.3
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 10.0
  augment_presets.use_byol_augmentations(config.augment)
  return config
