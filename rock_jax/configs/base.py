"""Shared base configuration for every ROCK experiment.

Each experiment file in `configs/` imports `get_base_config()`, overrides a few
fields and returns the result from its own `get_config(arg)`. Every field can be
overridden on the command line, e.g. `--config.model.variant=baseline`.

Paper settings (NYUv2, Mordan et al. 2018, supplementary Section 2) are the
defaults; numbers the paper leaves out follow `shared/spec/REFERENCE.md`.
"""

import ml_collections

# The 27 NYUv2 scene classes (sorted distinct `sceneTypes`, no grouping).
NYUV2_SCENES = (
  'basement', 'bathroom', 'bedroom', 'bookstore', 'cafe', 'classroom', 'computer_lab',
  'conference_room', 'dinette', 'dining_room', 'excercise_room', 'foyer', 'furniture_store',
  'home_office', 'home_storage', 'indoor_balcony', 'kitchen', 'laundry_room', 'living_room',
  'office', 'office_kitchen', 'playroom', 'printer_room', 'reception_room', 'student_lounge',
  'study', 'study_room',
)  # fmt: skip


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the paper's NYUv2 ROCK setting (Adam, batch 8, 480x640, 40k steps)."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds init, data order and augmentation.
  config.mode = 'train'  # 'train' (train + periodic eval) or 'eval' (evaluate init_from).

  # ---------------------------------------------------------------- model
  model = config.model = ml_collections.ConfigDict()
  # 'baseline' (SSD on conv5), 'flat_mtl' (1x1 heads on conv5, no fusion),
  # 'rock_no_fusion' (encoder + predictor only) or 'rock'.
  model.variant = 'rock'
  model.num_classes = 19  # Foreground classes; logits have num_classes + 1 (0 = background).
  model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16' (params stay float32).
  # 1x1 convs as 'conv' (lax.conv) or 'dot' (matrix multiply, same parameters and result);
  # 'auto' = 'dot' on a CPU (XLA:CPU conv gradients are slow), 'conv' on GPU and TPU.
  # 'dot' also takes the kernel gradient of wide 3x3 convs as dots (models/layers.py).
  model.conv_1x1 = 'auto'

  model.backbone = ml_collections.ConfigDict()
  model.backbone.depth = 50  # 18, 34, 50 or 101.
  model.backbone.layout = 'v1.5'  # 'v1.5' (torchvision: stride on 3x3) or 'v1' (Keras).
  model.backbone.output_stride = 16  # 8, 16 or 32: dilate the last stage(s).
  model.backbone.width = 64  # Stem width; 64 for the real ResNets, smaller for CPU tests.
  model.backbone.stage_sizes = ()  # Blocks per stage; () = the standard ones for `depth`.
  model.backbone.freeze_bn_stats = True  # Use running stats in training (reference).
  # The paper starts from ImageNet weights: training refuses to start without
  # `init_backbone` (a folder from `rock_jax.tools.import_weights`) while this or
  # freeze_bn_stats is on; `--config.init_backbone=scratch` opts out (BN stats trained).
  model.backbone.imagenet_init = True
  model.backbone.bn_momentum = 0.9  # Flax momentum (= PyTorch momentum 0.1).

  # Auxiliary tasks of the ROCK block, in order. Override e.g. `--config.model.tasks=depth`.
  model.tasks = 'scene,depth,normals'
  model.task_specs = ml_collections.ConfigDict()
  # kind: 'image_class' (GAP -> logits), 'dense_scalar' (channel mean -> 1 map),
  # 'dense_vector' (channel mean per group of width / components maps).
  model.task_specs.scene = dict(kind='image_class', width=27, components=1)
  model.task_specs.depth = dict(kind='dense_scalar', width=128, components=1)
  model.task_specs.normals = dict(kind='dense_vector', width=384, components=3)

  model.rock = ml_collections.ConfigDict()
  model.rock.trunk_width = 512  # Shared encoder trunk width (2048 / 4).
  model.rock.fusion = 'add'  # 'add' (Eq. 1) or 'product' (Table 5, depth-only).
  model.rock.extra_task_convs = False  # Reference option: 1x1/3x3/1x1 per task before K_t conv.
  model.rock.post_fusion_bn_relu = False  # Reference option: BN + ReLU after fusion.
  model.rock.conv_bias = False  # Reference option: conv biases before the BatchNorms.
  # Flax BatchNorm momentum of the block; None = model.backbone.bn_momentum.
  model.rock.bn_momentum = ml_collections.config_dict.placeholder(float)

  model.ssd = ml_collections.ConfigDict()
  # Extra feature maps after conv5: (1x1 mid width, 3x3 stride-2 output width) each, every
  # conv followed by BN + ReLU. A 3x3 stride-2 conv with padding 1 maps n -> ceil(n / 2):
  # at 480x640 the 7 maps are 30x40 (conv5, 2048) -> 15x20 (256) -> 8x10 (256) -> 4x5 (128)
  # -> 2x3 (128) -> 1x2 (128) -> 1x1 (128), with 4, 6, 6, 6, 4, 4, 4 boxes per location:
  # 4800 + 1800 + 480 + 120 + 24 + 8 + 4 = 7236 default boxes.
  # Sized for the paper's 27.8M-parameter detection baseline (Table 4) with 19 classes:
  # ResNet-50 23,508,032 + extras 1,223,680 + box/class predictors 2,931,504 = 27,663,216
  # (-0.5 %); the conv5 predictors alone are 1.77M, which is why the extras are narrow.
  # An entry may also give the 3x3 conv's (kernel, stride, padding), each an int or an
  # (h, w) pair: (mid, out, kernel, stride, padding); see configs/rock_pytorch.py.
  model.ssd.extra_layers = ((128, 256), (128, 256), (64, 128), (64, 128), (64, 128), (64, 128))
  model.ssd.extras_bn = True  # BN + ReLU in the extras (ResNet-SSD); False: conv + bias + ReLU.
  model.ssd.extras_conv_bias = False  # Reference option: conv biases before the BatchNorms.
  model.ssd.bn_momentum = ml_collections.config_dict.placeholder(float)  # None: the backbone's.
  # Default boxes: one scale per map plus one (for the extra square box sqrt(s_k s_k+1)).
  model.ssd.scales = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05, 1.2)
  # Boxes per location: 2 squares + (r, 1/r) per ratio.
  model.ssd.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,), (2,))
  # Per map (step_h, step_w) in pixels between default-box centres; () = image size / map
  # size. rock-pytorch's steps are not always that (configs/rock_pytorch.py).
  model.ssd.steps = ()
  model.ssd.variances = (0.1, 0.2)  # Centre, size.
  model.ssd.prior_pi = 0.01  # Focal-loss prior for foreground class biases.

  # ----------------------------------------------------------------- loss
  loss = config.loss = ml_collections.ConfigDict()
  loss.weights = ml_collections.ConfigDict(
    dict(cls=1.0, loc=3.0, scene=3.0, depth=3.0, normals=30.0)
  )
  # How the parts combine (rock_jax/weighting.py): 'fixed' (the weights above, the paper),
  # 'uncertainty' (Kendall et al. 2018), 'dwa' (Liu et al. 2019) or 'pcgrad' (Yu et al. 2020).
  loss.weighting = 'fixed'
  loss.weighting_lr = 1e-3  # uncertainty: Adam rate of the log-variances.
  loss.dwa_window = 50  # dwa: steps per loss average (the paper's epoch); 1 = per step.
  loss.dwa_temperature = 2.0  # dwa: softmax temperature T (2 in the paper).
  loss.pcgrad_shared = ('^backbone/',)  # pcgrad: regexes of the shared parameter paths.
  loss.cls = 'softmax_hnm'  # 'softmax_hnm' (3:1 hard negatives) or 'focal'.
  loss.neg_pos_ratio = 3
  loss.focal_alpha = 0.25
  loss.focal_gamma = 2.0
  loss.match_pos_iou = 0.5  # IoU >= 0.5: positive.
  loss.match_neg_iou = 0.4  # IoU < 0.4: background; in between: ignored.
  loss.depth = 'berhu'  # 'berhu' (c = 0.2 x batch max), 'berhu_fixed' or 'huber'.
  loss.depth_c = 0.2  # Fraction of the batch max for 'berhu'; the threshold for the others.
  loss.min_depth = 0.1  # Metres: depth is clamped to [min_depth, max_depth] before the log.
  loss.max_depth = 10.0
  # The normals loss is offset - cos: 1.0 (the reference's) keeps it >= 0, like every
  # other logged part, so that a total near 0 means good; 0.0 gives the plain -cos.
  loss.normals_offset = 1.0

  # ----------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  data.name = 'nyuv2'  # TFDS builder: 'nyuv2', 'mlt', 'cityscapes' or 'synthetic_rooms'.
  data.builder_config = 'paper'  # nyuv2: 'paper' (673/122/654) or 'official' (795/654).
  data.train_split = 'train'
  # Periodic evaluation and the choice of the best checkpoint (by mAP@0.5); '' = none
  # (the final checkpoint is the one tested). Never the test split.
  data.eval_split = 'validation'
  # Evaluated once, after training, on the checkpoint chosen on `eval_split` (or the
  # final one); its results are `results.json`. '' = no test evaluation.
  data.test_split = 'test'
  data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir (gs:// ok).
  data.manual_dir = ml_collections.config_dict.placeholder(str)  # Original files, for builds.
  data.image_size = (480, 640)  # (H, W) the model sees.
  data.max_boxes = 100  # Ground-truth boxes per image after padding (eval only).
  data.train_fraction = 1.0  # Table 6: train on the first fraction of the train split.
  data.shuffle_buffer = 1000
  # Training shards (0: one per host); fix it (e.g. 2) for the same batches on 1 or 2 hosts.
  data.train_shards = 0
  data.augment = True
  data.crop = True  # SSD random crops with a fixed aspect ratio.
  data.flip = True
  data.color_jitter = ml_collections.ConfigDict(
    dict(brightness=0.15, contrast=0.25, saturation=0.25, hue=0.05)
  )
  # Extra datasets mixed into training: ((name, builder_config, weight), ...); the main
  # dataset gets weight `data.weight`.
  data.mixture = ()
  data.weight = 1.0

  # ------------------------------------------------------------- training
  train = config.train = ml_collections.ConfigDict()
  train.batch_size = 8  # Global batch, split over devices and hosts.
  train.num_steps = 40_000
  train.learning_rate = 5e-5
  train.lr_boundaries = (30_000,)  # Steps where the learning rate is multiplied by lr_decay.
  train.lr_decay = 0.1  # 5e-5 -> 5e-6.
  train.optimizer = 'adam'
  train.weight_decay = 0.0  # The reference uses 2e-3.
  train.decoupled_weight_decay = False  # False: coupled L2 as in PyTorch Adam (reference).
  train.weight_decay_exclude = ()  # Regexes of parameter paths without decay, e.g. ('bias',).
  train.clip_grad_norm = 0.0  # 0 disables clipping.
  train.backbone_lr_multiplier = 1.0  # 0 freezes the backbone (optax.partition).
  train.log_every = 50
  train.eval_every = 5_000
  train.checkpoint_every = 5_000
  train.keep_checkpoints = 3  # Last K; the best by validation mAP@0.5 is kept too.
  train.async_checkpoints = True  # Write checkpoints in the background while training goes on.

  # ----------------------------------------------------------- evaluation
  evaluation = config.eval = ml_collections.ConfigDict()
  evaluation.batch_size = 8
  evaluation.score_threshold = 0.05
  evaluation.pre_nms_top_k = 200  # Per class.
  evaluation.nms_iou = 0.3
  evaluation.max_detections = 100
  # True: clip decoded boxes to the image before NMS; False: NMS on the unclipped boxes and
  # clip only the output, as rock-pytorch does (rock_jax.postprocess).
  evaluation.clip_before_nms = True
  evaluation.num_panels = 4  # Figure-3 panels written for the first test images.
  evaluation.max_batches = 0  # Evaluate on at most this many batches; 0 = the whole split.

  # ------------------------------------------------------- initialisation
  config.init_from = ml_collections.config_dict.placeholder(str)  # Orbax checkpoint dir.
  # Regexes of parameter paths that must not load from init_from (fresh init kept).
  config.init_exclude = ()
  # Imported ImageNet backbone (`rock_jax.tools.import_weights --output`), or 'scratch'.
  config.init_backbone = ml_collections.config_dict.placeholder(str)
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so the real entry point runs in well under a minute on a CPU."""
  config.model.backbone.depth = 18
  config.model.backbone.width = 8
  config.model.backbone.stage_sizes = (1, 1, 1, 1)
  # No ImageNet weights exist for this tiny backbone: from scratch, BN statistics trained.
  config.model.backbone.freeze_bn_stats = False
  config.model.backbone.imagenet_init = False
  config.model.rock.trunk_width = 16
  config.model.task_specs.depth.width = 8
  config.model.task_specs.normals.width = 12
  config.model.ssd.extra_layers = ((8, 16), (8, 16), (8, 16), (8, 16))
  config.model.ssd.scales = (0.1, 0.3, 0.5, 0.7, 0.9, 1.05)
  config.model.ssd.aspect_ratios = ((2,), (2,), (2,), (2,), (2,))
  config.data.image_size = (64, 96)
  config.data.shuffle_buffer = 16
  config.train.batch_size = 2
  config.train.num_steps = 4
  config.train.lr_boundaries = (3,)
  config.train.log_every = 2
  config.train.eval_every = 4
  config.train.checkpoint_every = 2
  config.eval.batch_size = 2
  config.eval.num_panels = 1
  return config


def split_arg(arg: str | None) -> tuple[list[str], bool]:
  """Splits a config argument like 'DN,smoke' into (['DN'], True).

  Every experiment file accepts `smoke` alone or after its own option, so that
  `--config=configs/nyuv2_tasks.py:DN,smoke` and `...:smoke` both work.
  """
  tokens = [t.strip() for t in (arg or '').split(',') if t.strip()]
  return [t for t in tokens if t != 'smoke'], 'smoke' in tokens
