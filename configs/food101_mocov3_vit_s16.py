"""MoCo v3 on Food-101 with a ViT-S/16, its 300-epoch ViT recipe, for a TPU v4-8 or 8 GPUs.

MoCo v3: Chen, Xie and He, 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"; facebookresearch/moco-v3 CONFIG.md's "ViT-Small, 1-node (8-GPU), 1024-batch
pre-training" command (CONFIG.md:109-116; ImageNet linear 73.2 at 300 epochs, CONFIG.md:195-197).

  python main.py --config=configs/food101_mocov3_vit_s16.py --workdir=gs://BUCKET/mocov3_vit

ViT-S/16 as moco-v3's vits.py `vit_small` (vits.py:115-118: width 384, 12 blocks, 12 heads
where timm's ViT-S has 6, MLP ratio 4, qkv bias, LayerNorm eps 1e-6), fixed 2-D sin-cos
position embedding (vits.py:53-69), class-token pooling, patch embedding frozen at its
random init (--stop-grad-conv1, vits.py:49-51: out of the optimiser entirely); projector
3 layers 4096-4096-256 ending in BatchNorm without affine (moco/builder.py:118), predictor
2 layers 4096-256 ending the same way (moco/builder.py:122, _build_mlp's last_bn=True);
each view through the networks alone; momentum encoder with momentum 0.99 -> 1 by cosine
(--moco-m-cos); symmetric InfoNCE at temperature 0.2 (--moco-t=.2); AdamW lr 1.5e-4 x
batch / 256 (main_moco.py:190), weight decay 0.1 on every parameter (main_moco.py:228-230
passes model.parameters()), 40 warm-up epochs then cosine to 0 over 300 epochs; BYOL's
asymmetric views with crops down to 8% (the ViT commands keep --crop-min's default 0.08,
main_moco.py:117-118). Batch 1024, as that command. Linear probe: main_lincls.py with
--lr=3 (CONFIG.md:143-144), SGD momentum 0.9, no weight decay, 90 epochs, batch 1024.
Every value with its source: docs/recipes.md ("MoCo v3 (ViT-S/16)").

Expected (not yet measured on Food-101 here): MoCo v3 reports ViT-S/16 at 73.2 ImageNet
linear top-1 after 300 epochs at batch 4096 (CONFIG.md:185-197).

Any other method runs on a ViT by one field: `--config.model.name=vit` (ViT-S/16 with the
fields of `config.model.vit`); its heads stay that method's ResNet heads (docs/recipes.md).
"""

from configs import food101_mocov3


def get_config():
  config = food101_mocov3.get_config()  # Food-101, bfloat16, BYOL's views, MoCo v3's heads.
  config.num_epochs = 300
  config.augment.crop_area_range = (0.08, 1.0)

  config.model.name = "vit"
  config.model.vit.variant = "S"
  config.model.vit.patch_size = 16
  config.model.vit.num_heads = 12
  config.model.vit.position_embedding = "sincos"
  config.model.vit.pooling = "cls"

  config.mocov3.projector_widths = (4096, 4096, 256)
  config.mocov3.predictor_widths = (4096, 256)
  config.mocov3.predictor_last_batch_norm = True
  config.mocov3.temperature = 0.2
  config.mocov3.base_target_momentum = 0.99

  config.optimizer.name = "adamw"
  config.optimizer.base_learning_rate = 1.5e-4
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 0.1
  config.optimizer.exclude_bn_and_bias = False  # AdamW(model.parameters(), ...).
  config.optimizer.adam_betas = (0.9, 0.999)  # torch.optim.AdamW's defaults.
  config.optimizer.adam_epsilon = 1e-8
  config.optimizer.warmup_epochs = 40.0
  config.optimizer.frozen_patterns = ("^encoder/patch_embed/",)

  config.linear_eval.learning_rate = 3.0
  config.linear_eval.lr_scaling = "linear"
  config.linear_eval.nesterov = False
  config.linear_eval.weight_decay = 0.0
  config.linear_eval.epochs = 90
  config.linear_eval.batch_size = 1024
  return config
