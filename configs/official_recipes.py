"""The official recipes, value by value, each with the file and line of the official code it
comes from, beside the project's Food-101 configs.

One place for the official numbers: docs/recipes.md is rendered from here
(`python -m configs.official_recipes > docs/recipes.md`), and tests/official_recipes_test.py
holds every Food-101 config against these rows and the document against this module, so an
edit to a config cannot drift from its recipe silently.

A row names the config field that carries the value (None for what the code does rather
than a field) and the official value in the project's units; where the project departs, its
own value and why. Sources are paths at the commits in REPOSITORIES.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

REPOSITORIES = {
    "simclr": ("google-research/simclr", "383d414"),
    "byol": ("google-deepmind/deepmind-research", "f5de0ed"),
    "haiku": ("google-deepmind/dm-haiku", "f4d858a"),
    "mocov3": ("facebookresearch/moco-v3", "c349e6e"),
    "mocov3_vit": ("facebookresearch/moco-v3", "c349e6e"),
    "vicreg": ("facebookresearch/vicreg", "4e12602"),
}

_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Row:
  """One recipe value.

  item: what it is; official: its official value, in the project's units (a config field's
  value) or words; source: 'path:line' in the method's repository (REPOSITORIES); field:
  the dotted config field that holds it, or None; stage: which config holds the field
  ('pretrain', 'linear', or 'finetune:<protocol>'); project: the project's value where it
  departs (then `why` says why), else unset; note: a remark that is not a departure.
  """
  item: str
  official: Any
  source: str
  field: str | None = None
  stage: str = "pretrain"
  project: Any = _UNSET
  why: str = ""
  note: str = ""

  @property
  def departs(self) -> bool:
    return self.project is not _UNSET

  @property
  def expected(self) -> Any:
    """What the config must hold: the project's value where it departs, else the official."""
    return self.project if self.departs else self.official


def _batch(official: int, source: str, stage: str = "pretrain",
           field: str = "batch_size") -> Row:
  """The batch row: 1024 in every Food-101 config (a departure where the official differs)."""
  item = "linear: batch" if stage == "linear" else "batch size"
  if official == 1024:
    return Row(item, official, source, field, stage)
  return Row(item, official, source, field, stage, project=1024,
             why="sized for 8 accelerators (a v3-8 / v4-8); the rate follows its scaling rule")


_LARS_ORDER_WHY = ("optax.lars, SimCLR's order; the two differ only while the rate changes "
                   "(warm-up, cosine), a second-order effect with momentum 0.9")
_PER_STEP_WHY = "the project's one schedule; the two differ by under one epoch's step"
_FINETUNE_WHY = ("every method fine-tunes under SimCLR v2's protocol (configs/"
                 "food101_finetune.py), so that methods compare under one protocol")

def _asymmetric_views(sources: dict[str, str]) -> tuple[Row, ...]:
  """BYOL's view recipe, which MoCo v3 and VICReg share, with each code's sources."""
  return (
      Row("horizontal flip", 0.5, sources["flip"], "augment.flip_probability"),
      Row("colour jitter (brightness, contrast, saturation, hue)", (0.4, 0.4, 0.2, 0.1),
          sources["jitter"], "augment.color_jitter"),
      Row("colour jitter probability", 0.8, sources["jitter_p"],
          "augment.color_jitter_probability"),
      Row("grayscale probability", 0.2, sources["gray"], "augment.grayscale_probability"),
      Row("blur probability, view 1", 1.0, sources["blur1"], "augment.view1.blur_probability"),
      Row("blur probability, view 2", 0.1, sources["blur2"], "augment.view2.blur_probability"),
      Row("blur sigma", (0.1, 2.0), sources["sigma"], "augment.blur_sigma_range"),
      Row("solarize probability, view 2 (view 1: 0)", 0.2, sources["solarize"],
          "augment.view2.solarize_probability"),
      Row("ImageNet mean/std normalisation", True, sources["normalize"], "augment.normalize"),
  )


SIMCLR = (
    # Backbone and views.
    Row("ResNet-50, zero-initialised last BatchNorm scale in each block", True,
        "tf2/resnet.py:466-467", "model.zero_init_residual"),
    Row("global (cross-replica) BatchNorm", "on", "tf2/run.py:208-210",
        note="jit over a mesh: BatchNorm statistics over the global batch"),
    Row("each view through the networks alone (no: both views in one pass, BatchNorm over 2N)",
        False, "tf2/model.py:259",
        "simclr.forward_views_separately"),
    # Head and loss.
    Row("projection head widths (3 layers, hidden = input width)", (2048, 2048, 128),
        "tf2/run.py:195-201, tf2/model.py:175", "simclr.head_widths"),
    Row("BatchNorm after every head layer, the last with scale and no shift", True,
        "tf2/model.py:135, 176-185", "simclr.head_batch_norm"),
    Row("temperature", 0.1, "README.md:102", "simclr.temperature"),
    Row("loss scale: loss_a + loss_b (each a mean over one view's anchors)", True,
        "tf2/objective.py:83-87", "simclr.sum_view_losses"),
    # Augmentations.
    Row("crop area", (0.08, 1.0), "tf2/data_util.py:314-320", "augment.crop_area_range"),
    Row("crop aspect ratio", (3 / 4, 4 / 3), "tf2/data_util.py:315", "augment.crop_ratio_range"),
    Row("horizontal flip", 0.5, "tf2/data_util.py:468-469", "augment.flip_probability"),
    Row("colour strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s), random order", 1.0,
        "tf2/run.py:232-234, tf2/data_util.py:66-69", "augment.color_jitter_strength"),
    Row("colour jitter probability", 0.8, "tf2/data_util.py:388",
        "augment.color_jitter_probability"),
    Row("grayscale probability", 0.2, "tf2/data_util.py:389", "augment.grayscale_probability"),
    Row("blur probability (each view)", 0.5, "tf2/data_util.py:413", "augment.blur_probability"),
    Row("blur sigma", (0.1, 2.0), "tf2/data_util.py:407", "augment.blur_sigma_range"),
    Row("image size", 224, "README.md:104", "augment.image_size"),
    Row("ImageNet mean/std normalisation (no: raw [0, 1] pixels)",
        False, "tf2/data_util.py:512-514",
        "augment.normalize"),
    # Optimiser.
    Row("optimiser", "lars", "tf2/run.py:163-165", "optimizer.name"),
    Row("momentum", 0.9, "tf2/run.py:167-169", "optimizer.momentum"),
    Row("LARS trust coefficient", 0.001, "tf2/lars_optimizer.py:22",
        "optimizer.trust_coefficient"),
    Row("BatchNorm and biases out of weight decay and the trust ratio", True,
        "tf2/model.py:40-42", "optimizer.exclude_bn_and_bias"),
    Row("learning rate inside the momentum (classic momentum)", "inside",
        "tf2/lars_optimizer.py:110-115"),
    Row("weight decay (the README's ImageNet command; tf2/run.py's default 1e-6 is v1's)",
        1e-4, "README.md:103", "optimizer.weight_decay"),
    Row("base learning rate", 0.075, "README.md:103", "optimizer.base_learning_rate"),
    Row("rate scaling: base x sqrt(batch)", "sqrt", "README.md:103", "optimizer.lr_scaling"),
    Row("warm-up epochs, then cosine to 0", 10.0, "tf2/run.py:45-47, tf2/model.py:105-108",
        "optimizer.warmup_epochs"),
    Row("epochs", 100, "README.md:102", "num_epochs"),
    _batch(4096, "README.md:102"),
    # Linear evaluation.
    Row("linear: SGD with Nesterov momentum", True, "model_util.py:88-90",
        "linear_eval.nesterov", "linear"),
    Row("linear: momentum", 0.9, "tf2/run.py:167-169", "linear_eval.momentum", "linear"),
    Row("linear: learning rate 0.1 x batch / 256", 0.1, "README.md:139",
        "linear_eval.learning_rate", "linear"),
    Row("linear: rate scaling", "linear", "run.py:46-48", "linear_eval.lr_scaling", "linear"),
    Row("linear: weight decay", 1e-6, "README.md:139", "linear_eval.weight_decay", "linear"),
    Row("linear: epochs (no warm-up, cosine to 0)", 90, "README.md:140", "linear_eval.epochs",
        "linear"),
    _batch(4096, "README.md:140", "linear", "linear_eval.batch_size"),
    Row("linear: features computed once (no: a fresh random crop and flip every step)", False,
        "data.py:164", "linear_eval.precompute_features", "linear"),
    # Fine-tuning (1% command; the 10% and 100% settings are the paper's).
    Row("fine-tune: LARS", "lars", "README.md:160", "finetune.optimizer.name", "finetune:1pct"),
    Row("fine-tune: learning rate 0.005 x sqrt(batch)", 0.005, "README.md:160-161",
        "finetune.optimizer.base_learning_rate", "finetune:1pct"),
    Row("fine-tune: weight decay", 0.0, "README.md:161", "finetune.optimizer.weight_decay",
        "finetune:1pct"),
    Row("fine-tune: warm-up epochs", 0.0, "README.md:162", "finetune.optimizer.warmup_epochs",
        "finetune:1pct"),
    Row("fine-tune: epochs with 1% of the labels", 60, "README.md:162", "finetune.epochs",
        "finetune:1pct"),
    Row("fine-tune: batch", 1024, "README.md:162", "finetune.batch_size", "finetune:1pct"),
    Row("fine-tune 1%: from the head's first layer (ft_proj_selector=1)", True,
        "README.md:166", "finetune.from_head_layer", "finetune:1pct"),
    Row("fine-tune: epochs with 10% of the labels", 30,
        "README.md:169 (points to the SimCLR v2 paper, Section 3)", "finetune.epochs",
        "finetune:10pct"),
    Row("fine-tune 10%: from the head's first layer", True,
        "README.md:169 (the SimCLR v2 paper, Section 4)", "finetune.from_head_layer",
        "finetune:10pct"),
    Row("fine-tune 100%: from the head's input (ft_proj_selector=0)", False,
        "tf2/run.py:203-206 (the SimCLR v2 paper, Section 4)", "finetune.from_head_layer",
        "finetune:100pct"),
)

BYOL = (
    Row("ResNet-50, zero-initialised last BatchNorm scale in each block (no: 1, the paper's)",
        False,
        "byol/README.md:109-111", "model.zero_init_residual",
        note="the released code zero-initialises them (haiku resnet.py:104); BYOL's README "
             "says the paper's results were obtained without that"),
    Row("global (cross-replica) BatchNorm", "on", "byol/configs/byol.py:50-53"),
    Row("each view through the networks alone (per-view BatchNorm)", True,
        "byol/byol_experiment.py:182-185", "byol.forward_views_separately"),
    Row("projector widths (Linear-BN-ReLU-Linear)", (4096, 256),
        "byol/configs/byol.py:40-42, byol/utils/networks.py:40-45", "byol.projector_widths"),
    Row("predictor widths (the same MLP)", (4096, 256), "byol/byol_experiment.py:158-162",
        "byol.predictor_widths"),
    Row("heads' last Linear without bias", "no bias", "byol/utils/networks.py:44"),
    Row("target momentum tau_base (the 300-epoch preset)", 0.99, "byol/configs/byol.py:23",
        "byol.base_target_momentum"),
    Row("tau to 1 by cosine", 1.0, "byol/utils/schedules.py:20-24",
        "byol.final_target_momentum"),
    Row("crop area", (0.08, 1.0), "byol/utils/dataset.py:210", "augment.crop_area_range"),
    *_asymmetric_views({
        "flip": "byol/utils/augmentations.py:29", "jitter": "byol/utils/augmentations.py:33-36",
        "jitter_p": "byol/utils/augmentations.py:38", "gray": "byol/utils/augmentations.py:40",
        "blur1": "byol/utils/augmentations.py:43-44", "blur2": "byol/utils/augmentations.py:63-64",
        "sigma": "byol/utils/augmentations.py:48-49",
        "solarize": "byol/utils/augmentations.py:65", "normalize": "byol/utils/dataset.py:65-68"}),
    Row("colour jitter ops", "TensorFlow's (additive brightness, per-channel contrast mean)",
        "byol/utils/augmentations.py:239-246", project="torchvision's",
        why="the project has one jitter, torchvision's, which MoCo v3 and VICReg use; the "
            "ranges and probabilities are BYOL's"),
    Row("optimiser", "lars", "byol/configs/byol.py:57-61", "optimizer.name"),
    Row("momentum", 0.9, "byol/configs/byol.py:60", "optimizer.momentum"),
    Row("LARS trust coefficient", 0.001, "byol/configs/byol.py:59",
        "optimizer.trust_coefficient"),
    Row("BatchNorm and biases out of weight decay and the trust ratio", True,
        "byol/byol_experiment.py:191-195", "optimizer.exclude_bn_and_bias"),
    Row("learning rate after the momentum", "after", "byol/utils/optimizers.py:182-188",
        project="inside", why=_LARS_ORDER_WHY),
    Row("weight decay (300-epoch preset)", 1e-6, "byol/configs/byol.py:22",
        "optimizer.weight_decay"),
    Row("base learning rate (300-epoch preset)", 0.3, "byol/configs/byol.py:21",
        "optimizer.base_learning_rate"),
    Row("rate scaling: base x batch / 256", "linear", "byol/utils/schedules.py:34",
        "optimizer.lr_scaling"),
    Row("warm-up epochs, then cosine to 0", 10.0, "byol/configs/byol.py:64",
        "optimizer.warmup_epochs"),
    Row("epochs (the preset)", 300, "byol/configs/byol.py:30", "num_epochs"),
    _batch(4096, "byol/main_loop.py:37"),
    Row("linear: SGD with Nesterov momentum", True, "byol/configs/eval.py:38-41",
        "linear_eval.nesterov", "linear"),
    Row("linear: momentum", 0.9, "byol/configs/eval.py:39", "linear_eval.momentum", "linear"),
    Row("linear: learning rate 0.2 x batch / 256", 0.2, "byol/configs/eval.py:42-45",
        "linear_eval.learning_rate", "linear"),
    Row("linear: rate scaling", "linear", "byol/utils/schedules.py:34", "linear_eval.lr_scaling",
        "linear"),
    Row("linear: weight decay", 0.0, "byol/eval_experiment.py:301", "linear_eval.weight_decay",
        "linear"),
    Row("linear: epochs", 80, "byol/configs/eval.py:29", "linear_eval.epochs", "linear"),
    _batch(4096, "byol/main_loop.py:37", "linear", "linear_eval.batch_size"),
    Row("linear: features computed once (no: a fresh random crop and flip every step)",
        False, "byol/utils/dataset.py:192-194",
        "linear_eval.precompute_features", "linear"),
    Row("fine-tuning: SGD on the encoder, all labels, 80 epochs, no projector",
        "its linear protocol, unfrozen", "byol/configs/eval.py:35-37",
        project="SimCLR v2's", why=_FINETUNE_WHY),
)

_MOCOV3_VIEW_SOURCES = {
    "flip": "main_moco.py:269", "jitter": "main_moco.py:264-266",
    "jitter_p": "main_moco.py:264-266", "gray": "main_moco.py:267",
    "blur1": "main_moco.py:268", "blur2": "main_moco.py:280", "sigma": "moco/loader.py:29-35",
    "solarize": "main_moco.py:281", "normalize": "main_moco.py:258-259"}

MOCOV3 = (
    Row("ResNet-50, zero_init_residual=True", True, "main_moco.py:185-187",
        "model.zero_init_residual"),
    Row("SyncBatchNorm (global)", "on", "main_moco.py:195-196"),
    Row("each view through the encoders alone (per-view BatchNorm)", True,
        "moco/builder.py:86-94", "mocov3.forward_views_separately"),
    Row("projector: _build_mlp(2, 2048, 4096, 256), last BatchNorm without affine",
        (4096, 256), "moco/builder.py:105", "mocov3.projector_widths",
        note="3 layers are the ViT recipe's (moco/builder.py:118)"),
    Row("predictor: _build_mlp(2, 256, 4096, 256, last_bn=False)", (4096, 256),
        "moco/builder.py:109", "mocov3.predictor_widths"),
    Row("Linear layers without bias", "no bias", "moco/builder.py:42"),
    Row("temperature", 1.0, "main_moco.py:104-105", "mocov3.temperature"),
    Row("momentum m_base (--moco-m)", 0.99, "main_moco.py:99-100",
        "mocov3.base_target_momentum"),
    Row("m to 1 by cosine (--moco-m-cos)", 1.0, "main_moco.py:431-434",
        "mocov3.final_target_momentum"),
    Row("crop area (--crop-min=.2 in every ResNet-50 command)", (0.2, 1.0), "CONFIG.md:14-18",
        "augment.crop_area_range"),
    *_asymmetric_views(_MOCOV3_VIEW_SOURCES),
    Row("optimiser", "lars", "main_moco.py:112-114", "optimizer.name"),
    Row("momentum", 0.9, "main_moco.py:67", "optimizer.momentum"),
    Row("LARS trust coefficient", 0.001, "moco/optimizer.py:14", "optimizer.trust_coefficient"),
    Row("1-d parameters (BatchNorm, biases) out of weight decay and the trust ratio", True,
        "moco/optimizer.py:27", "optimizer.exclude_bn_and_bias"),
    Row("learning rate after the momentum", "after", "moco/optimizer.py:41-43",
        project="inside", why=_LARS_ORDER_WHY),
    Row("weight decay", 1e-6, "main_moco.py:69-71", "optimizer.weight_decay"),
    Row("base learning rate (100 epochs)", 0.6, "main_moco.py:65-66",
        "optimizer.base_learning_rate"),
    Row("rate scaling: lr x batch / 256", "linear", "main_moco.py:189-190",
        "optimizer.lr_scaling"),
    Row("warm-up epochs, then cosine to 0", 10.0, "main_moco.py:115, 420-428",
        "optimizer.warmup_epochs"),
    Row("epochs", 100, "CONFIG.md:14-18", "num_epochs"),
    _batch(4096, "main_moco.py:60-62"),
    Row("linear: Nesterov momentum (no: plain SGD momentum)",
        False, "main_lincls.py:233-238", "linear_eval.nesterov",
        "linear"),
    Row("linear: momentum", 0.9, "main_lincls.py:60", "linear_eval.momentum", "linear"),
    Row("linear: learning rate 0.1 x batch / 256", 0.1, "main_lincls.py:58",
        "linear_eval.learning_rate", "linear"),
    Row("linear: rate scaling", "linear", "main_lincls.py:195-196", "linear_eval.lr_scaling",
        "linear"),
    Row("linear: weight decay", 0.0, "main_lincls.py:62-63", "linear_eval.weight_decay",
        "linear"),
    Row("linear: epochs", 90, "main_lincls.py:49", "linear_eval.epochs", "linear"),
    _batch(1024, "main_lincls.py:53-55", "linear", "linear_eval.batch_size"),
    Row("linear: cosine per epoch", "per epoch", "main_lincls.py:499-503", project="per step",
        why=_PER_STEP_WHY),
    Row("linear: features computed once (no: a fresh random crop and flip every step)",
        False, "main_lincls.py:272-277",
        "linear_eval.precompute_features", "linear"),
    Row("fine-tuning of a ResNet", "none published (ViT only, through DeiT)",
        "README.md:159-171", project="SimCLR v2's", why=_FINETUNE_WHY),
)

MOCOV3_VIT = (
    Row("ViT-S: width 384, 12 blocks, MLP ratio 4, qkv bias, LayerNorm eps 1e-6", "S",
        "vits.py:115-118", "model.vit.variant"),
    Row("heads", 12, "vits.py:117", "model.vit.num_heads", note="timm's ViT-S has 6"),
    Row("patch size", 16, "vits.py:117", "model.vit.patch_size"),
    Row("fixed 2-D sin-cos position embedding, a zero row for the class token", "sincos",
        "vits.py:28-29, 53-69", "model.vit.position_embedding"),
    Row("features: the class token after the last LayerNorm (timm's VisionTransformer)", "cls",
        "vits.py:25", "model.vit.pooling"),
    Row("init: xavier_uniform Linear (q, k, v each its own matrix), class token N(0, 1e-6)",
        "MoCo v3's", "vits.py:31-47"),
    Row("patch embedding frozen at its random init (--stop-grad-conv1)",
        ("^encoder/patch_embed/",), "vits.py:49-51", "optimizer.frozen_patterns"),
    Row("no drop-path in pretraining (vit_small gets no drop_path_rate: timm's default 0)",
        0.0, "main_moco.py:181-182, vits.py:115-118", "model.vit.drop_path_rate"),
    Row("SyncBatchNorm (global) in the heads", "on", "main_moco.py:195-196"),
    Row("each view through the encoders alone", True, "moco/builder.py:86-94",
        "mocov3.forward_views_separately"),
    Row("projector: _build_mlp(3, 384, 4096, 256), last BatchNorm without affine",
        (4096, 4096, 256), "moco/builder.py:118", "mocov3.projector_widths"),
    Row("predictor: _build_mlp(2, 256, 4096, 256)", (4096, 256), "moco/builder.py:122",
        "mocov3.predictor_widths"),
    Row("predictor's last BatchNorm without affine (last_bn=True)", True,
        "moco/builder.py:47-50", "mocov3.predictor_last_batch_norm"),
    Row("Linear layers without bias", "no bias", "moco/builder.py:42"),
    Row("temperature (--moco-t=.2)", 0.2, "CONFIG.md:113", "mocov3.temperature"),
    Row("momentum m_base (--moco-m)", 0.99, "main_moco.py:99-100",
        "mocov3.base_target_momentum"),
    Row("m to 1 by cosine (--moco-m-cos)", 1.0, "main_moco.py:431-434",
        "mocov3.final_target_momentum"),
    Row("crop area (--crop-min's default: the ViT commands do not set it)", (0.08, 1.0),
        "main_moco.py:117-118", "augment.crop_area_range"),
    *_asymmetric_views(_MOCOV3_VIEW_SOURCES),
    Row("optimiser (--optimizer=adamw)", "adamw", "CONFIG.md:111", "optimizer.name"),
    Row("AdamW betas (torch's defaults)", (0.9, 0.999), "main_moco.py:229-230",
        "optimizer.adam_betas"),
    Row("AdamW epsilon (torch's default)", 1e-8, "main_moco.py:229-230",
        "optimizer.adam_epsilon"),
    Row("weight decay on every parameter (AdamW(model.parameters()))", False,
        "main_moco.py:229", "optimizer.exclude_bn_and_bias"),
    Row("weight decay", 0.1, "CONFIG.md:111", "optimizer.weight_decay"),
    Row("base learning rate", 1.5e-4, "CONFIG.md:111", "optimizer.base_learning_rate"),
    Row("rate scaling: lr x batch / 256", "linear", "main_moco.py:189-190",
        "optimizer.lr_scaling"),
    Row("warm-up epochs, then cosine to 0", 40.0, "CONFIG.md:112", "optimizer.warmup_epochs"),
    Row("epochs", 300, "CONFIG.md:112", "num_epochs"),
    _batch(1024, "CONFIG.md:110"),
    Row("linear: learning rate 3 x batch / 256 (--lr=3)", 3.0, "CONFIG.md:144",
        "linear_eval.learning_rate", "linear"),
    Row("linear: rate scaling", "linear", "main_lincls.py:195-196", "linear_eval.lr_scaling",
        "linear"),
    Row("linear: Nesterov momentum (no: plain SGD momentum)", False, "main_lincls.py:233-238",
        "linear_eval.nesterov", "linear"),
    Row("linear: momentum", 0.9, "main_lincls.py:60", "linear_eval.momentum", "linear"),
    Row("linear: weight decay", 0.0, "main_lincls.py:62-63", "linear_eval.weight_decay",
        "linear"),
    Row("linear: epochs", 90, "main_lincls.py:49", "linear_eval.epochs", "linear"),
    _batch(1024, "main_lincls.py:53-55", "linear", "linear_eval.batch_size"),
    Row("fine-tuning: DeiT's code with all its default settings (README.md:85), among them "
        "drop-path 0.1 (facebookresearch/deit main.py:43 at 0282d2a; set it here with "
        "--config.model.vit.drop_path_rate=0.1); the transfer commands pass --drop-path 0.1 "
        "but 0 for Pets (transfer/README.md:97-124)", "DeiT's recipe (in the DeiT repository)",
        "README.md:85, 159-171", project="SimCLR v2's", why=_FINETUNE_WHY),
)

VICREG = (
    Row("ResNet-50, zero_init_residual=True", True, "main_vicreg.py:189-191",
        "model.zero_init_residual"),
    Row("SyncBatchNorm (global)", "on", "main_vicreg.py:106-108"),
    Row("each view through the networks alone (per-view BatchNorm)", True,
        "main_vicreg.py:195-196", "vicreg.forward_views_separately"),
    Row("expander (--mlp)", (8192, 8192, 8192), "main_vicreg.py:44", "vicreg.expander_widths"),
    Row("expander's last Linear without bias", "no bias", "main_vicreg.py:231"),
    Row("invariance coefficient", 25.0, "main_vicreg.py:58", "vicreg.invariance_weight"),
    Row("variance coefficient", 25.0, "main_vicreg.py:60", "vicreg.variance_weight"),
    Row("covariance coefficient", 1.0, "main_vicreg.py:62", "vicreg.covariance_weight"),
    Row("crop area", (0.08, 1.0), "augmentations.py:41-43", "augment.crop_area_range"),
    *_asymmetric_views({
        "flip": "augmentations.py:44", "jitter": "augmentations.py:45-51",
        "jitter_p": "augmentations.py:45-51", "gray": "augmentations.py:53",
        "blur1": "augmentations.py:54", "blur2": "augmentations.py:77",
        "sigma": "augmentations.py:20-21", "solarize": "augmentations.py:78",
        "normalize": "augmentations.py:57-59"}),
    Row("optimiser", "lars", "main_vicreg.py:109-115", "optimizer.name"),
    Row("momentum", 0.9, "main_vicreg.py:251-252", "optimizer.momentum"),
    Row("LARS trust coefficient", 0.001, "main_vicreg.py:251-252", "optimizer.trust_coefficient"),
    Row("1-d parameters out of weight decay and the trust ratio", True, "main_vicreg.py:235-236",
        "optimizer.exclude_bn_and_bias"),
    Row("learning rate after the momentum", "after", "main_vicreg.py:297-299",
        project="inside", why=_LARS_ORDER_WHY),
    Row("weight decay", 1e-6, "main_vicreg.py:54", "optimizer.weight_decay"),
    Row("base learning rate (the 100-epoch command)", 0.3, "README.md:72",
        "optimizer.base_learning_rate", note="0.2 is the 1000-epoch command's (README.md:80)"),
    Row("rate scaling: base x batch / 256", "linear", "main_vicreg.py:170",
        "optimizer.lr_scaling"),
    Row("warm-up epochs", 10.0, "main_vicreg.py:169", "optimizer.warmup_epochs"),
    Row("cosine to 0.001 x the peak", "0.001 x peak", "main_vicreg.py:174-178", project="0",
        why="the project's one schedule ends at 0; the last 0.1% of the rate"),
    Row("epochs (the 100-epoch command)", 100, "README.md:72", "num_epochs"),
    _batch(512, "README.md:72"),
    Row("linear: Nesterov momentum (no: plain SGD momentum)",
        False, "evaluate.py:167", "linear_eval.nesterov",
        "linear"),
    Row("linear: momentum", 0.9, "evaluate.py:167", "linear_eval.momentum", "linear"),
    Row("linear: learning rate (--lr-head)", 0.02, "README.md:91", "linear_eval.learning_rate",
        "linear"),
    Row("linear: not scaled with the batch", "none", "evaluate.py:164", "linear_eval.lr_scaling",
        "linear"),
    Row("linear: weight decay", 1e-6, "evaluate.py:83", "linear_eval.weight_decay", "linear",
        note="on the kernel here; VICReg's SGD decays the bias too"),
    Row("linear: epochs", 100, "evaluate.py:59-60", "linear_eval.epochs", "linear"),
    Row("linear: batch", 256, "evaluate.py:66", "linear_eval.batch_size", "linear"),
    Row("linear: cosine per epoch", "per epoch", "evaluate.py:168", project="per step",
        why=_PER_STEP_WHY),
    Row("linear: the reported score", "best epoch on the validation set",
        "evaluate.py:280-281", project="last epoch",
        why="Food-101's validation split is its test set: choosing the epoch on it is not a "
            "held-out score"),
    Row("linear: features computed once (no: a fresh random crop and flip every step)",
        False, "evaluate.py:193-196",
        "linear_eval.precompute_features", "linear"),
    Row("fine-tuning: SGD on the encoder, 20 epochs, no expander",
        "backbone lr 0.03 / 0.01, head 0.08 / 0.1 (1% / 10%)", "README.md:99, 105",
        project="SimCLR v2's", why=_FINETUNE_WHY),
)

RECIPES = {"simclr": SIMCLR, "byol": BYOL, "mocov3": MOCOV3, "mocov3_vit": MOCOV3_VIT,
           "vicreg": VICREG}
TITLES = {"simclr": "SimCLR (v2 head)", "byol": "BYOL", "mocov3": "MoCo v3 (ResNet-50)",
          "mocov3_vit": "MoCo v3 (ViT-S/16)", "vicreg": "VICReg"}
# A recipe's method (config.method) where its name is not one.
METHODS = {"mocov3_vit": "mocov3"}
# Recipes whose one config holds their linear protocol too (not food101_linear.py's).
SINGLE_CONFIG = {"mocov3_vit": "food101_mocov3_vit_s16"}


def config_for(method: str, stage: str):
  """The project's Food-101 config that holds `stage`'s values for `method`."""
  if method in SINGLE_CONFIG and stage in ("pretrain", "linear"):
    return importlib.import_module(f"configs.{SINGLE_CONFIG[method]}").get_config()
  if stage == "pretrain":
    name = "food101" if method == "simclr" else f"food101_{method}"
    return importlib.import_module(f"configs.{name}").get_config()
  if stage == "linear":
    return importlib.import_module("configs.food101_linear").get_config(method)
  protocol = stage.split(":")[1]
  return importlib.import_module("configs.food101_finetune").get_config(f"{method},{protocol}")


def config_name(method: str, stage: str) -> str:
  if method in SINGLE_CONFIG and stage in ("pretrain", "linear"):
    return f"configs/{SINGLE_CONFIG[method]}.py"
  if stage == "pretrain":
    return "configs/food101.py" if method == "simclr" else f"configs/food101_{method}.py"
  if stage == "linear":
    return f"configs/food101_linear.py:{method}"
  return f"configs/food101_finetune.py:{method},{stage.split(':')[1]}"


def _shown(value: Any) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, tuple):
    return "(" + ", ".join(_shown(v) for v in value) + ")"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def render_markdown() -> str:
  """docs/recipes.md."""
  lines = [
      "# Recipes: each method's Food-101 config against its official code",
      "",
      "<!-- Rendered from configs/official_recipes.py: python -m configs.official_recipes "
      "> docs/recipes.md -->",
      "",
      "Every value of each method's Food-101 pretraining config, its linear-probe protocol "
      "(`configs/food101_linear.py:METHOD`) and its fine-tuning protocol "
      "(`configs/food101_finetune.py:METHOD,PROTOCOL`), beside the official code's value and "
      "the file and line it comes from. **Bold** rows are where the project departs, with "
      "the reason. `tests/official_recipes_test.py` holds each config to these values.",
      "",
      "What every Food-101 config shares: 101 classes, the 75,750 `train` images for "
      "pretraining and probes, all 25,250 `validation` images (Food-101's test set) for "
      "the scores, batch 1024 on 8 accelerators with each method's own rate-scaling rule, "
      "bfloat16 compute with float32 parameters.",
      "",
      "A ViT backbone (`--config.model.name=vit`): MoCo v3 is the one method here with an "
      "official ViT recipe (`configs/food101_mocov3_vit_s16.py`, its 3-layer projector and "
      "a predictor ending in BatchNorm). SimCLR, BYOL and VICReg publish none, so on a ViT "
      "they keep their ResNet heads and settings above; AdamW "
      "(`--config.optimizer.name=adamw`) is what ViTs usually train with.",
      "",
      "Official code, at these commits:",
      "",
  ]
  lines += [f"- {name}: [{repo}](https://github.com/{repo}/tree/{commit}) at `{commit}`"
            for name, (repo, commit) in REPOSITORIES.items()]
  for method, rows in RECIPES.items():
    repo, commit = REPOSITORIES[method]
    lines += ["", f"## {TITLES[method]}", "",
              f"Configs: `{config_name(method, 'pretrain')}`, "
              f"`{config_name(method, 'linear')}`, `configs/food101_finetune.py:{method},"
              f"PROTOCOL`. Sources: `{repo}` at `{commit}`.", "",
              "| value | official | source | config field | project |",
              "|---|---|---|---|---|"]
    for row in rows:
      field = f"`{row.field}`" if row.field else "(code)"
      if row.departs:
        project = f"**{_shown(row.project)}: {row.why}**"
        item = f"**{row.item}**"
      else:
        project = "same" + (f" ({row.note})" if row.note else "")
        item = row.item
      lines.append(f"| {item} | {_shown(row.official)} | `{row.source}` | {field} | "
                   f"{project} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(render_markdown(), end="")
