"""BYOL on Food-101 (Grill et al., 2020, "Bootstrap Your Own Latent"), for a TPU v3-8 /
v4-8 or 8 GPUs:

  python main.py --config=configs/food101_byol.py --workdir=gs://BUCKET/byol

The paper's recipe (Section 3.3, Appendix B and C): ResNet-50; projector 4096 -> 256 and
predictor 4096 -> 256, each Linear-BatchNorm-ReLU-Linear; target = EMA of the online encoder
and projector, tau from 0.99 to 1 by cosine over training; the symmetric loss; LARS with
BatchNorm and biases out of weight decay and the trust ratio, lr 0.2 x batch / 256,
weight decay 1.5e-6, 10 warm-up epochs then cosine; BYOL's augmentations (colour (0.4, 0.4,
0.2, 0.1) with p 0.8, grayscale 0.2, blur p 1.0 / 0.1, solarize p 0 / 0.2, ImageNet
normalisation). 300 epochs, at the paper's 300-epoch tau_base of 0.99; batch 1024 (the
paper's 4096; lr scales linearly).
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
  config.byol.base_target_momentum = 0.99
  config.optimizer.name = "lars"
  config.optimizer.base_learning_rate = 0.2
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1.5e-6
  config.optimizer.warmup_epochs = 10.0
  augment_presets.use_byol_augmentations(config.augment)
  return config
