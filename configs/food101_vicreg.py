"""VICReg on Food-101 (Bardes, Ponce and LeCun, 2022; facebookresearch/vicreg), for a TPU
v3-8 / v4-8 or 8 GPUs:

  python main.py --config=configs/food101_vicreg.py --workdir=gs://BUCKET/vicreg

ResNet-50; expander 8192-8192-8192; invariance 25, variance 25, covariance 1, variance and
covariance over the global batch; LARS (BatchNorm and biases excluded) lr 0.2 x batch /
256, weight decay 1e-6, 10 warm-up epochs then cosine; BYOL's augmentations. 100 epochs
(the paper's is 1000), batch 1024 (the paper's 2048; lr scales linearly).
"""

from configs import augment_presets, default


def get_config():
  config = default.get_config()
  config.method = "vicreg"
  config.dataset = "food101"
  config.compute_dtype = "bfloat16"
  config.eval_split = "validation"
  config.batch_size = 1024
  config.num_epochs = 100
  config.optimizer.name = "lars"
  config.optimizer.base_learning_rate = 0.2
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 10.0
  augment_presets.use_byol_augmentations(config.augment)
  return config
