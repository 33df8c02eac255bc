"""MoCo v3 on Food-101, the ResNet recipe (Chen, Xie and He, 2021; facebookresearch/moco-v3
README, ResNet-50 100 epochs), for a TPU v3-8 / v4-8 or 8 GPUs:

  python main.py --config=configs/food101_mocov3.py --workdir=gs://BUCKET/mocov3

ResNet-50; projector 3 layers 4096 -> 256 (last BatchNorm without affine), predictor 2
layers 4096 -> 256; momentum encoder and projector with momentum 0.99 -> 1 by cosine;
symmetric InfoNCE at temperature 1.0, each device's queries against the keys of all
devices; LARS (BatchNorm and biases excluded) lr 0.6 x batch / 256, weight decay 1e-6, 10
warm-up epochs then cosine; BYOL's augmentations. 100 epochs, batch 1024 (the paper's 4096;
lr scales linearly).
"""

from configs import augment_presets, default


def get_config():
  config = default.get_config()
  config.method = "mocov3"
  config.dataset = "food101"
  config.compute_dtype = "bfloat16"
  config.eval_split = "validation"
  config.batch_size = 1024
  config.num_epochs = 100
  config.mocov3.temperature = 1.0
  config.mocov3.base_target_momentum = 0.99
  config.optimizer.name = "lars"
  config.optimizer.base_learning_rate = 0.6
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 10.0
  augment_presets.use_byol_augmentations(config.augment)
  return config
