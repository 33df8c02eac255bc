"""One config block per self-supervised method (`config.<method>`), with each recipe's
source. Pure ml_collections: the package's method files (simclr_jax/methods/) read them.

The optimiser and augmentations of a recipe live in the full configs
(configs/food101_byol.py, ...), since they are shared fields.
"""

import ml_collections

# The methods, one block each: simclr_jax.methods.METHODS's names, here for the configs'
# arguments (`configs/demo.py:byol`) without importing the model code (a test holds them
# equal).
NAMES = ("simclr", "byol", "mocov3", "vicreg")


def simclr() -> ml_collections.ConfigDict:
  """SimCLR (Chen et al., 2020): NT-Xent at temperature 0.1, SimCLR v2's 3-layer head."""
  block = ml_collections.ConfigDict()
  block.temperature = 0.1
  # Projection head widths (hidden..., output); BatchNorm after every layer (v2) or none.
  block.head_widths = (2048, 2048, 128)
  block.head_batch_norm = True
  # False: one forward pass over both views (BatchNorm statistics over 2N images, as the
  # paper's TF code). True: one pass per view (as the seed's model(x1), model(x2)).
  block.forward_views_separately = False
  # True: the official code's loss scale, the sum of both views' mean anchor losses, twice
  # the mean over all 2N anchors (the seed's); with LARS only the scale of the gradients'
  # momentum changes, not the trust-ratio-normalised steps, but weight decay's share does.
  block.sum_view_losses = False
  return block


def byol() -> ml_collections.ConfigDict:
  """BYOL (Grill et al., 2020): projector 4096 -> 256 with BatchNorm, predictor 4096 ->
  256, target = EMA of the online encoder and projector with tau from 0.99 to 1 by cosine,
  symmetric loss (both views predict the other's target projection). Sources: docs/recipes.md."""
  block = ml_collections.ConfigDict()
  # Linear-BN-ReLU-Linear, the last without bias (byol/utils/networks.py:40-45).
  block.projector_widths = (4096, 256)
  block.predictor_widths = (4096, 256)
  block.base_target_momentum = 0.99  # The 300-epoch preset (byol/configs/byol.py:23).
  block.final_target_momentum = 1.0
  # One pass per view, online and target: BatchNorm statistics per view
  # (byol/byol_experiment.py:183-184).
  block.forward_views_separately = True
  return block


def mocov3() -> ml_collections.ConfigDict:
  """MoCo v3, ResNet recipe (Chen, Xie and He, 2021; facebookresearch/moco-v3): projector
  2 layers 4096 -> 256 (last BatchNorm without affine; 3 layers is its ViT recipe),
  predictor 2 layers 4096 -> 256, momentum encoder + projector with momentum 0.99 -> 1 by
  cosine, symmetric InfoNCE at temperature 1.0 with keys from every device. Sources:
  docs/recipes.md."""
  block = ml_collections.ConfigDict()
  block.projector_widths = (4096, 256)  # MoCo_ResNet: _build_mlp(2, ...) (moco/builder.py:105).
  block.predictor_widths = (4096, 256)  # _build_mlp(2, ..., last_bn=False) (moco/builder.py:109).
  # The predictor's output through BatchNorm without affine: the ViT recipe's (last_bn=True,
  # moco/builder.py:122, 47-50), not the ResNet recipe's (last_bn=False, :109).
  block.predictor_last_batch_norm = False
  block.temperature = 1.0
  block.base_target_momentum = 0.99
  block.final_target_momentum = 1.0
  # base_encoder(x1), base_encoder(x2), likewise the momentum encoder (moco/builder.py:86-94).
  block.forward_views_separately = True
  return block


def vicreg() -> ml_collections.ConfigDict:
  """VICReg (Bardes, Ponce and LeCun, 2022; facebookresearch/vicreg): expander
  8192-8192-8192 (the last Linear without bias); invariance 25, variance 25, covariance 1,
  variance and covariance over the global batch. Sources: docs/recipes.md."""
  block = ml_collections.ConfigDict()
  block.expander_widths = (8192, 8192, 8192)
  block.invariance_weight = 25.0
  block.variance_weight = 25.0
  block.covariance_weight = 1.0
  # backbone(x), backbone(y): one pass per view (main_vicreg.py:195-196).
  block.forward_views_separately = True
  return block


def use_simclr_paper_details(config) -> ml_collections.ConfigDict:
  """The official SimCLR code's details (google-research/simclr) that the seed does not
  have, set on a full config:

  - zero-initialised last BatchNorm scale in each residual block (resnet.py's
    `init_zero=True`): each block starts as the identity;
  - its loss scale: loss_a + loss_b, each the mean over one view's anchors (twice the
    seed's mean over all 2N);
  - its supervised head (here the online probe) kept out of weight decay and LARS's trust
    ratio (`exclude_from_weight_decay=[..., 'head_supervised']`);
  - raw [0, 1] pixels as input (no mean/std normalisation).
  """
  config.model.zero_init_residual = True
  config.simclr.sum_view_losses = True
  config.optimizer.exclude_patterns = ("^probe/",)
  config.augment.normalize = False
  return config
