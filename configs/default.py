"""Shared defaults: the SimCLR paper's recipe (Chen et al., 2020; v2 head), on TFDS food101.

Variant configs import `get_config` from here and override what differs.
"""

import ml_collections

from configs import methods


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data. dataset: a TFDS image dataset's name (read from data_dir), 'digits' (scikit-learn's,
  # offline), 'folder' (your own images: data_dir/train/<class>/<image> and
  # data_dir/test/<class>/<image>; or data_dir/<class>/<image> split by holdout_fraction;
  # or a flat folder of unlabelled images, for pretraining only: configs/folder.py) or
  # 'food101_raw' (data_dir = the unpacked food-101/ with images/ and meta/; splits train
  # and test).
  config.dataset = "food101"
  config.data_dir = ml_collections.config_dict.placeholder(str)  # Local path or gs://.
  config.train_split = "train"
  config.eval_split = "validation"  # 'train' evaluates on the training images (optimistic).
  # dataset='folder' with class folders but no split folders: this fraction of each class
  # (by a hash of each file's path under data_dir, so fixed across runs and hosts) is the
  # 'test' split, the rest 'train'. Use the same value in every stage. 0: no holdout.
  config.holdout_fraction = 0.0
  config.shuffle_buffer = 16_384
  config.data_threads = 0  # tf.data threads; 0 = all cores (half when JAX runs on CPU).
  # Deterministic element order: a resumed run sees exactly the batches it would have seen
  # (bit-for-bit resumption after a preemption). Its cost: docs/benchmarks.md.
  config.data_deterministic = True
  config.cache_encoded_images = False  # Hold the encoded training images in host memory.

  # Augmentations (SimCLR paper, Appendix A): colour strength s gives ColorJitter
  # (0.8s, 0.8s, 0.8s, 0.2s).
  config.augment = ml_collections.ConfigDict()
  config.augment.image_size = 224
  config.augment.crop_area_range = (0.08, 1.0)
  config.augment.crop_ratio_range = (3 / 4, 4 / 3)
  config.augment.flip_probability = 0.5
  config.augment.color_jitter_strength = 1.0
  # Explicit ColorJitter (brightness, contrast, saturation, hue); set, it replaces the
  # strength's (BYOL's: (0.4, 0.4, 0.2, 0.1)).
  config.augment.color_jitter = ml_collections.config_dict.placeholder(tuple)
  config.augment.color_jitter_probability = 0.8
  config.augment.grayscale_probability = 0.2
  config.augment.blur_probability = 0.5
  config.augment.blur_sigma_range = (0.1, 2.0)
  config.augment.solarize_probability = 0.0  # BYOL's solarize (threshold 0.5), after blur.
  # Per-view settings (BYOL's asymmetric views: configs/augment_presets.py): a field set in
  # view1 or view2 overrides the shared field above for that view; None: the shared value.
  for view in ("view1", "view2"):
    config.augment[view] = ml_collections.ConfigDict({
        "flip_probability": ml_collections.config_dict.placeholder(float),
        "color_jitter_strength": ml_collections.config_dict.placeholder(float),
        "color_jitter": ml_collections.config_dict.placeholder(tuple),
        "color_jitter_probability": ml_collections.config_dict.placeholder(float),
        "grayscale_probability": ml_collections.config_dict.placeholder(float),
        "blur_probability": ml_collections.config_dict.placeholder(float),
        "blur_sigma_range": ml_collections.config_dict.placeholder(tuple),
        "solarize_probability": ml_collections.config_dict.placeholder(float)})
  config.augment.normalize = True  # ImageNet mean/std, on the device (models.image_input).
  # Antialiased bilinear resize, as PIL and so torchvision's RandomResizedCrop do. False:
  # plain bilinear, as big_vision and TF SimCLR do (no antialiasing); about 1.1-1.2x the
  # views/s on the CPU (docs/benchmarks.md).
  config.augment.resize_antialias = True
  config.augment.eval_crop_fraction = 0.875

  # What convolutions and dense layers compute in: 'float32' or 'bfloat16' (mixed precision:
  # parameters, optimiser state, BatchNorm statistics and the loss stay float32).
  config.compute_dtype = "float32"
  # How convolutions compute: 'xla' (XLA's convolution op; TPU and GPU) or 'patches' (a
  # patch extraction times one matmul, the same parameters and sums; a CPU option,
  # docs/benchmarks.md). Like compute_dtype, checkpoints move freely between the settings.
  config.conv_algorithm = "xla"

  # The backbone (encoder): a family from the registry (simclr_jax/backbones) and its fields.
  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet"
  config.model.depth = 50
  config.model.width_multiplier = 1.0
  config.model.small_image_stem = False
  # Zero-initialised last BatchNorm scale in each residual block (the official SimCLR
  # code's); False: torchvision's initialisation, as the seed.
  config.model.zero_init_residual = False
  # model.name='vit' (backbones/vit.py): a Vision Transformer as MoCo v3's, ViT-S/16 here.
  config.model.vit = ml_collections.ConfigDict()
  config.model.vit.variant = "S"  # 'mu' (tiny: tests, CPU demos), 'Ti', 'S' or 'B'.
  config.model.vit.patch_size = 16  # Image sizes must be multiples of it (4 for 32 px).
  # Heads per block; None: the variant's (timm's: Ti 3, S 6, B 12; MoCo v3's ViT-S has 12).
  config.model.vit.num_heads = ml_collections.config_dict.placeholder(int)
  # 'sincos': MoCo v3's fixed 2-D sin-cos table (not a parameter); 'learned': timm's.
  config.model.vit.position_embedding = "sincos"
  # A learned table is made for this image size's patch grid (timm's img_size) and
  # resampled for other sizes; set it to the training image size.
  config.model.vit.pos_embed_image_size = 224
  config.model.vit.pooling = "cls"  # 'cls' (class token) or 'gap' (mean of patch tokens).
  # Stochastic depth at the last block, rising linearly from 0 at the first (timm's rule),
  # in training only, on the online network only (never an EMA target). A run-time field:
  # fine-tuning sets its own (DeiT's default 0.1, with which MoCo v3 fine-tunes its ViTs);
  # MoCo v3 pretrains with 0.
  config.model.vit.drop_path_rate = 0.0
  # jax.nn.dot_product_attention's implementation: 'xla' (anywhere) or 'cudnn' (GPU,
  # compute_dtype bfloat16); checkpoints move freely between them.
  config.model.vit.attention = "xla"

  # The self-supervised method (simclr_jax/methods) and one config block per method, each
  # with its heads and loss settings (configs/methods.py); only `config.<method>` is read.
  config.method = "simclr"
  config.simclr = methods.simclr()
  config.byol = methods.byol()
  config.mocov3 = methods.mocov3()
  config.vicreg = methods.vicreg()

  # A linear probe on stop-gradient encoder features, trained with labels alongside the
  # method's loss, its accuracy in TensorBoard while pretraining runs (labelled sources).
  config.online_probe = False

  # Training.
  config.batch_size = 1024  # Global, across all devices and hosts.
  config.num_epochs = 100
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "lars"  # 'lars', 'sgd' or 'adamw' (decoupled, as torch.optim.AdamW).
  config.optimizer.base_learning_rate = 0.075
  # 'sqrt': lr = base * sqrt(batch); 'linear': lr = base * batch / 256; 'none': lr = base.
  config.optimizer.lr_scaling = "sqrt"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False  # With 'sgd'.
  config.optimizer.weight_decay = 1e-6
  # Weight decay (and LARS's trust ratio) for kernels only: norms' scales and biases, all
  # biases, a ViT's position embedding and class token excluded. False: every parameter
  # (MoCo v3's AdamW).
  config.optimizer.exclude_bn_and_bias = True
  # With it, also exclude the parameters whose path matches one of these regexes (e.g.
  # '^probe/': the official SimCLR code keeps its supervised head out of both).
  config.optimizer.exclude_patterns = ()
  config.optimizer.trust_coefficient = 0.001
  config.optimizer.adam_betas = (0.9, 0.999)  # With 'adamw' (torch's defaults).
  config.optimizer.adam_epsilon = 1e-8
  # > 0: gradients clipped to this global norm before the optimiser (0 = no clipping).
  config.optimizer.gradient_clip_norm = 0.0
  # Regexes over parameter paths (e.g. '^encoder/patch_embed/'): those parameters are out
  # of the optimiser entirely (no update, no weight decay, no state) and stay as they are.
  config.optimizer.frozen_patterns = ()
  # (regex, factor) pairs: the parameters whose path matches get factor x the learning rate
  # (the first matching pair), e.g. (("^predictor/", 10.0),). Empty: one rate for all.
  config.optimizer.learning_rate_multipliers = ()
  config.optimizer.warmup_epochs = 10.0
  # 'step': the cosine moves every step; 'epoch': held within an epoch, as PyTorch's
  # CosineAnnealingLR(T_max=epochs) stepped once per epoch.
  config.optimizer.schedule_unit = "step"

  # Bookkeeping.
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 3
  # JAX's persistent compilation cache: a rerun, resume or later stage of the same config
  # loads its compiled steps from here instead of compiling them again (minutes on a TPU).
  # A local folder, or a gs:// folder for multi-host runs (only process 0 writes, all
  # read); '' turns it off. JAX_COMPILATION_CACHE_DIR, when set, takes precedence.
  config.compilation_cache_dir = "~/.cache/simclr_jax/xla"

  # Linear evaluation on frozen features (projection head dropped).
  config.linear_eval = ml_collections.ConfigDict()
  # Which pretraining checkpoint: that workdir's (default: --workdir) step (default: latest).
  config.linear_eval.pretrain_workdir = ml_collections.config_dict.placeholder(str)
  config.linear_eval.checkpoint_step = ml_collections.config_dict.placeholder(int)
  config.linear_eval.batch_size = 1024  # Feature extraction and classifier batches.
  # The classifier trained on augmented images is checkpointed this often (and on a stop
  # signal) in workdir/linear_eval_checkpoints, and resumes from there.
  config.linear_eval.checkpoint_every_steps = 1000
  config.linear_eval.log_every_steps = 100  # The classifier on images: its loss and rate.
  # False: the SimCLR protocol, the classifier sees randomly cropped and flipped training
  # images through the frozen encoder every step. True: features of the centre-cropped
  # training images are computed once and the classifier trains on them (much faster).
  config.linear_eval.precompute_features = False
  config.linear_eval.epochs = 90
  # The classifier's SGD: learning_rate x batch_size / 256 with lr_scaling 'linear' (SimCLR's
  # and MoCo v3's 0.1, BYOL's 0.2), as it is with 'none' (VICReg's); each method's protocol:
  # configs/food101_linear.py.
  config.linear_eval.learning_rate = 0.1
  config.linear_eval.lr_scaling = "linear"
  config.linear_eval.momentum = 0.9
  config.linear_eval.nesterov = True
  config.linear_eval.weight_decay = 0.0
  config.linear_eval.standardize_features = True  # With precomputed features.
  config.linear_eval.few_shot_per_class = 0  # > 0: also a probe on k labels per class,
  config.linear_eval.few_shot_trials = 5  # averaged over this many draws of the k.
  # L2 weight decay of the few-shot probe: a handful of labels needs the regularisation
  # that the all-labels probe does not (as CLIP's few-shot logistic regression).
  config.linear_eval.few_shot_weight_decay = 0.0
  config.linear_eval.random_init_baseline = False  # Also probe a random-init encoder.
  # Weighted kNN on the same frozen features (cosine similarity, votes exp(sim / T)).
  config.linear_eval.knn_k = 200
  config.linear_eval.knn_temperature = 0.07
  # t-SNE map of (at most this many) evaluation features: workdir/tsne.png; 0 disables.
  config.linear_eval.tsne_points = 5000

  # Fine-tuning (--mode=finetune): the pretrained encoder, a linear classifier on it
  # (optionally on the projection head's first layer), all layers trained with labels.
  # Defaults: the SimCLR v2 recipe (configs/food101_finetune.py says more).
  config.finetune = ml_collections.ConfigDict()
  config.finetune.pretrain_workdir = ml_collections.config_dict.placeholder(str)  # --workdir
  config.finetune.checkpoint_step = ml_collections.config_dict.placeholder(int)  # newest
  # The labelled part of the training split: stratified (every class kept, at least one
  # example each), chosen deterministically from config.seed; 1.0 = all of it.
  config.finetune.label_fraction = 1.0
  # Another dataset (transfer): any source config.dataset accepts; unset fields are the
  # pretraining data's (config.dataset, data_dir, train_split, eval_split, image size).
  config.finetune.dataset = ml_collections.config_dict.placeholder(str)
  config.finetune.data_dir = ml_collections.config_dict.placeholder(str)
  config.finetune.train_split = ml_collections.config_dict.placeholder(str)
  config.finetune.eval_split = ml_collections.config_dict.placeholder(str)
  config.finetune.image_size = ml_collections.config_dict.placeholder(int)
  # SimCLR v2 fine-tunes from the first layer of the projection head (Linear, BatchNorm,
  # ReLU): the classifier sits on that layer, kept from pretraining.
  config.finetune.from_head_layer = False
  config.finetune.batch_size = 1024
  config.finetune.epochs = 60
  config.finetune.label_smoothing = 0.0
  config.finetune.optimizer = ml_collections.ConfigDict()
  config.finetune.optimizer.name = "lars"  # 'lars', 'sgd' (with nesterov below) or 'adamw'.
  config.finetune.optimizer.base_learning_rate = 0.005
  config.finetune.optimizer.lr_scaling = "sqrt"  # 0.005 * sqrt(1024) = 0.16.
  config.finetune.optimizer.momentum = 0.9
  config.finetune.optimizer.nesterov = True  # With 'sgd'.
  config.finetune.optimizer.weight_decay = 0.0
  config.finetune.optimizer.exclude_bn_and_bias = True
  # The classifier starts at zero: LARS's trust ratio (|w| / |g|) would keep it there.
  # The official SimCLR code keeps its supervised head out of both (head_supervised).
  config.finetune.optimizer.exclude_patterns = ("^classifier/",)
  config.finetune.optimizer.trust_coefficient = 0.001
  config.finetune.optimizer.adam_betas = (0.9, 0.999)
  config.finetune.optimizer.adam_epsilon = 1e-8
  config.finetune.optimizer.gradient_clip_norm = 0.0
  config.finetune.optimizer.frozen_patterns = ()  # Paths as 'encoder/...', 'classifier/...'.
  # Layer-wise learning-rate decay (1 = off): layer l of a backbone with L blocks (0 the
  # embeddings, L + 1 the classifier) gets rate x layer_decay ** (L + 1 - l). MAE: 0.65
  # for ViT-B, 0.75 for ViT-L (FINETUNE.md). Needs a backbone with layers (vit).
  config.finetune.optimizer.layer_decay = 1.0
  config.finetune.optimizer.warmup_epochs = 0.0
  config.finetune.optimizer.schedule_unit = "step"
  config.finetune.log_every_steps = 50
  config.finetune.checkpoint_every_steps = 1000  # Also at the end of every epoch.
  # The same fine-tuning from a random-init encoder, in the same command, reported beside.
  config.finetune.random_init_baseline = False

  # Export (--mode=export, --mode=extract_features) of the pretrained encoder in
  # export.pretrain_workdir (default: --workdir), at export.checkpoint_step (newest).
  config.export = ml_collections.ConfigDict()
  config.export.pretrain_workdir = ml_collections.config_dict.placeholder(str)
  config.export.checkpoint_step = ml_collections.config_dict.placeholder(int)
  # Splits whose features --mode=extract_features writes; () = train_split and eval_split.
  config.export.feature_splits = ()

  # Compile check (--mode=compile_check): this config's pretraining step compiled on this
  # machine for a Cloud TPU slice, without one (needs libtpu: pip install "jax[tpu]==0.10.2"),
  # and per chip its memory against the chip's HBM, FLOPs and bytes per view and the roofline
  # bound on views/s; workdir/compile_check.json.
  config.compile_check = ml_collections.ConfigDict()
  # The slice, as Cloud TPU names it: v4-N and v5p-N (N TensorCores, 2 per chip: v4-8 is 4
  # chips), v5e-N and v6e-N (N chips); multi-host slices too (v5e-256, v4-512).
  config.compile_check.topology = "v5e-8"
  # Classes of the online probe when config.online_probe (no data is read to count them).
  config.compile_check.probe_classes = 101
  # Also search the largest images per chip (a multiple of 8) whose step compiles: one more
  # compile per try (seconds when it does not fit, as long as this one when it does).
  config.compile_check.search_largest_batch = False
  return config
