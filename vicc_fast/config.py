"""The one configuration schema of vicc_fast.

Every setting is a field of a dataclass below, with its meaning in ``metadata["help"]``; ``--help`` of every
CLI prints them from here. Defaults are the ViCC paper's numbers (K=300, tau 0.1, eps 0.05, 3 Sinkhorn
iterations, queue 1920, LARS lr 0.6, wd 1e-6, ...). YAML files in ``configs/`` override them and
``key=value`` dotlist arguments override the YAML. A wrong key or type is a :class:`ConfigError` whose
message is one line naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "synthetic_demo.yaml"


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the offending key."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help text (mutable defaults are copied per instance)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------------------------- enums
class Stream(str, enum.Enum):
    rgb = "rgb"
    flow = "flow"


class DataBackend(str, enum.Enum):
    dali = "dali"
    torch = "torch"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Decoder(str, enum.Enum):
    cpu = "cpu"
    nvdec = "nvdec"


class BadSample(str, enum.Enum):
    error = "error"
    skip = "skip"


class ShortVideos(str, enum.Enum):
    pad = "pad"
    reject = "reject"


class DataDtype(str, enum.Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class FlowNorm(str, enum.Enum):
    imagenet = "imagenet"
    unit = "unit"


class GrayMode(str, enum.Enum):
    channel = "channel"
    luma = "luma"


class GrayPer(str, enum.Enum):
    frame = "frame"
    view = "view"


class FlowLayout(str, enum.Enum):
    released = "released"
    xy0 = "xy0"


class CropMode(str, enum.Enum):
    released = "released"
    classifier = "classifier"
    torchvision = "torchvision"


class DataRecipe(str, enum.Enum):
    none = "none"
    released = "released"


class ColorJitterMode(str, enum.Enum):
    released = "released"
    affine = "affine"


class EvalOptim(str, enum.Enum):
    sgd = "sgd"
    adam = "adam"


class ClusterProtocol(str, enum.Enum):
    auto = "auto"
    hungarian = "hungarian"
    majority = "majority"


class ClusterPrototypes(str, enum.Enum):
    refit = "refit"
    trained = "trained"


class EvalCrop(str, enum.Enum):
    center = "center"
    tencrop = "tencrop"


class EvalWindows(str, enum.Enum):
    overlap = "overlap"
    uniform = "uniform"
    random = "random"


class Backbone(str, enum.Enum):
    s3d = "s3d"
    r21d = "r21d"
    r3d = "r3d"
    tiny = "tiny"


class S3dInit(str, enum.Enum):
    released = "released"
    torchvision = "torchvision"


class ShuffleViews(str, enum.Enum):
    second = "second"
    all = "all"


class ResNetSize(str, enum.Enum):
    paper = "paper"
    tv18 = "tv18"


class MethodName(str, enum.Enum):
    vicc = "vicc"
    coclr = "coclr"
    goca = "goca"


class Phase(str, enum.Enum):
    all = "all"
    rgb1 = "rgb1"
    flow1 = "flow1"
    cross = "cross"


class Optimizer(str, enum.Enum):
    lars = "lars"
    sgd = "sgd"
    adam = "adam"


class LrScheduleKind(str, enum.Enum):
    cosine = "cosine"
    step = "step"


class Amp(str, enum.Enum):
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


class KernelBackend(str, enum.Enum):
    auto = "auto"
    triton = "triton"
    torch = "torch"


class FlowMethod(str, enum.Enum):
    tvl1 = "tvl1"
    tvl1_torch = "tvl1-torch"  # the same TV-L1 in batched PyTorch (data_prep/flow_torch.py), CPU or GPU
    dis = "dis"
    farneback = "farneback"


class UberNceLoss(str, enum.Enum):
    """How UberNCE scores a row with several positives."""

    mean_log_prob = "mean_log_prob"  # mean over the positives of their log-probabilities (CoCLR main_nce.py)
    log_sum_prob = "log_sum_prob"  # log of their summed probability: eq. 2's multi-instance InfoNCE


class GocaVariant(str, enum.Enum):
    goca = "goca"
    sview = "sview"
    avg = "avg"
    sep = "sep"


# ---------------------------------------------------------------------------------------------- sections
@dataclass
class SyntheticConfig:
    """The built-in motion-defined action data set (``python -m data_prep.synthetic``)."""

    num_classes: int = _f(10, "number of motion classes (at most the number the generator defines)")
    train_per_class: int = _f(40, "training videos per class")
    test_per_class: int = _f(10, "test videos per class")
    frames: int = _f(48, "frames per video")
    fps: int = _f(25, "frame rate written into the videos")
    height: int = _f(128, "video height in pixels")
    width: int = _f(171, "video width in pixels")
    seed: int = _f(0, "seed: the same seed writes byte-identical videos")
    flow_method: FlowMethod = _f(
        FlowMethod.tvl1, "optical flow used when building shards: tvl1|tvl1-torch|dis|farneback"
    )


@dataclass
class AugmentConfig:
    """Training-view augmentation (the released transforms; the reasons are in FIDELITY.md)."""

    crop_scale: list[float] = _f([0.2, 1.0], "area range [min, max] of the random resized crop")
    aspect_ratio: list[float] = _f([0.75, 1.3333333], "aspect ratio (w/h) range of the random resized crop")
    crop: CropMode = _f(
        CropMode.released,
        "random resized crop: released (1 try, else whole frame) | classifier (10 tries) | torchvision",
    )
    same_start_prob: float = _f(0.5, "probability that the two views of a video start at the same frame")
    hflip: bool = _f(
        True, "random horizontal flip (of both streams of a view with data.augment.align_streams)"
    )
    align_streams: bool = _f(
        True,
        "RGB view i and flow view i share crop, flip and photometric draws (released); false = independent",
    )
    flow_photometric: bool = _f(True, "colour jitter, grayscale and blur on the flow image too (released)")
    flow_flip_negate: bool = _f(
        False, "negate flow x on flipped views (false = released: flipped like images)"
    )
    aug_controller: bool = _f(
        True,
        "released controller: one-clip samples get one strong view, two-clip ones each with strong_aug_prob",
    )
    strong_aug_prob: float = _f(0.3, "probability of the strong augmentation per view of a two-clip sample")
    color_jitter_prob: float = _f(0.8, "probability of colour jitter on a strong view")
    brightness: float = _f(0.4, "colour jitter brightness strength")
    contrast: float = _f(0.4, "colour jitter contrast strength")
    saturation: float = _f(0.4, "colour jitter saturation strength")
    hue: float = _f(0.1, "colour jitter hue strength")
    color_jitter: ColorJitterMode = _f(
        ColorJitterMode.released,
        "released (ColorJitter's ops in random order on 8-bit frames) | affine (one folded map, no clipping)",
    )
    grayscale_prob: float = _f(0.2, "probability of grayscale on a strong view")
    grayscale: GrayMode = _f(
        GrayMode.channel, "channel (released RandomGray: one channel copied to all three) | luma"
    )
    grayscale_per: GrayPer = _f(GrayPer.frame, "channel drawn per frame (released) | per view")
    blur_prob: float = _f(0.5, "probability of Gaussian blur on a strong view")
    blur_sigma: list[float] = _f([0.1, 2.0], "Gaussian blur sigma range [min, max] in pixels")


@dataclass
class DataEvalConfig:
    """Eval-mode clips and crops (retrieval, probe and finetune tests, feature extraction)."""

    windows: EvalWindows = _f(
        EvalWindows.overlap,
        "clips per video: overlap (released: every half-overlapping window) | uniform | random (data.eval.clips)",
    )
    clips: int = _f(10, "clips per video with data.eval.windows=uniform or random")
    crop: EvalCrop = _f(EvalCrop.center, "spatial crop: center | tencrop")
    color_jitter_prob: float = _f(
        0.3, "probability per video, stream and crop of the released test-time colour jitter (0 = none)"
    )
    color_jitter: list[float] = _f(
        [0.2, 0.2, 0.2, 0.1], "test-time jitter strengths [brightness, contrast, saturation, hue] (released)"
    )
    crop_fraction: float = _f(
        224 / 240, "eval crops span this fraction of the frame's shorter side (224/240: released)"
    )


@dataclass
class DataConfig:
    """Shards on disk, how they are read, and the input representation; augmentation and eval sampling below."""

    root: str = _f("data/synthetic", "folder with manifest.json and the WebDataset shards")
    build_if_missing: bool = _f(True, "build the synthetic shards into `root` when its manifest is missing")
    backend: DataBackend = _f(DataBackend.dali, "input pipeline: dali (fast) | torch (DataLoader baseline)")
    device: Device = _f(Device.auto, "where to augment: auto (GPU when present) | cpu | gpu")
    decoder: Decoder = _f(
        Decoder.cpu,
        "VP9 decoding with GPU augmentation: cpu (DALI's CPU decoder) | nvdec (frames >= 128x128)",
    )
    num_frames: int = _f(32, "frames per clip T (S3D 32, R(2+1)D/R3D 16)")
    stride: int = _f(1, "temporal stride between clip frames (S3D 1, R(2+1)D/R3D 2)")
    crop_size: int = _f(128, "spatial size of every view, training and eval")
    flow_normalisation: FlowNorm = _f(
        FlowNorm.imagenet, "flow input scaling: imagenet (released: RGB's mean/std) | unit (x, y to [-1, 1])"
    )
    flow_layout: FlowLayout = _f(
        FlowLayout.released, "flow image channels: released (128, y, x) | xy0 (x, y, 0)"
    )
    dtype: DataDtype = _f(
        DataDtype.auto, "dtype of the views: auto (follows train.amp) | float32 | float16 | bfloat16"
    )
    shuffle_buffer: int = _f(1024, "samples in the reader's shuffle buffer (tar order is shuffled too)")
    union_decode: bool = _f(
        True, "decode the frame span covering all views once when that is cheaper than one decode per view"
    )
    threads: int = _f(2, "DALI CPU threads / DataLoader workers per rank")
    prefetch: int = _f(2, "batches prepared ahead of the training step")
    on_bad_sample: BadSample = _f(
        BadSample.error, "a sample that fails to decode: error | skip (counted, warned)"
    )
    short_videos: ShortVideos = _f(
        ShortVideos.pad,
        "videos shorter than a clip: pad (released: first frame repeated) | reject (a bad sample)",
    )
    require_recipe: DataRecipe = _f(
        DataRecipe.none, "released (refuse data not built at 240x320 with source-size TV-L1) | none"
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: DataEvalConfig = field(default_factory=DataEvalConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    backbone: Backbone = _f(Backbone.s3d, "encoder: s3d | r21d | r3d | tiny (small 3D CNN for CPU demos)")
    resnet: ResNetSize = _f(
        ResNetSize.paper,
        "size of r21d/r3d: paper (one block per stage, released; R(2+1)D 14.4M) | tv18 (torchvision's, 31.3M)",
    )
    s3d_init: S3dInit = _f(
        S3dInit.released,
        "S3D BatchNorm and conv init: released (BN eps 1e-5, momentum 0.1; conv N(0, 0.01)) | torchvision",
    )
    tiny_width: int = _f(32, "channel width of the tiny backbone")
    proj_hidden: int = _f(2048, "hidden width of the 2-layer MLP projection head")
    proj_dim: int = _f(128, "output dimension D of the projection head (L2-normalised)")
    num_prototypes: int = _f(300, "number of prototypes K")


@dataclass
class SwavConfig:
    """The SwAV-style head ViCC and GOCA share: swapped prediction over Sinkhorn assignments, a feature queue."""

    temperature: float = _f(0.1, "softmax temperature tau of the swapped prediction")
    epsilon: float = _f(0.05, "Sinkhorn entropy regularisation epsilon")
    sinkhorn_iters: int = _f(3, "Sinkhorn-Knopp iterations")
    queue_size: int = _f(1920, "feature queue length per view (0 = no queue)")
    queue_when_full: bool = _f(
        True, "queued rows join the Sinkhorn assignment once the queue is full (false = while it fills)"
    )

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.temperature > 0, "method.swav.temperature", "must be > 0"),
            (self.epsilon > 0, "method.swav.epsilon", "must be > 0"),
            (self.sinkhorn_iters > 0, "method.swav.sinkhorn_iters", "must be > 0"),
            (self.queue_size >= 0, "method.swav.queue_size", "must be >= 0"),
        ]


@dataclass
class ViccConfig:
    """ViCC's own settings: its schedule within ``schedule`` (queue starts, prototype freezing, cross batch)."""

    queue_start_rgb: int = _f(150, "epoch at which the queue starts in rgb1")
    queue_start_flow: int = _f(200, "epoch at which the queue starts in flow1")
    single_freeze_prototypes: int = _f(100, "epochs the prototypes stay frozen in single-stream phases")
    single_lr_epochs: int = _f(
        0, "length of the single-stream phases' cosine lr schedule in epochs (0 = schedule.single_epochs)"
    )
    cross_queue_start: int = _f(25, "epoch of each cross-stream alternation at which the queue starts")
    cross_batch_size: int = _f(
        0,
        "clips per rank per step in the cross-stream phases (0 = train.batch_size; the lr stays train.batch_size's)",
    )
    cross_freeze_prototypes: bool = _f(
        False, "keep the prototypes frozen throughout the cross-stream stage (paper: false)"
    )
    frozen_train_quirk: bool = _f(
        True,
        "frozen stream in train mode from step 5 of each alternation (released); false = eval mode",
    )

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.queue_start_rgb >= 0, "method.vicc.queue_start_rgb", "must be >= 0"),
            (self.queue_start_flow >= 0, "method.vicc.queue_start_flow", "must be >= 0"),
            (self.single_freeze_prototypes >= 0, "method.vicc.single_freeze_prototypes", "must be >= 0"),
            (self.cross_queue_start >= 0, "method.vicc.cross_queue_start", "must be >= 0"),
            (
                self.cross_batch_size == 0 or self.cross_batch_size > 1,
                "method.vicc.cross_batch_size",
                "must be 0 (= train.batch_size) or > 1 (Sinkhorn needs a batch)",
            ),
        ]


@dataclass
class CoclrConfig:
    momentum: float = _f(0.999, "momentum of the key encoder")
    queue_size: int = _f(2048, "negative queue length")
    temperature: float = _f(0.07, "InfoNCE temperature")
    topk: int = _f(5, "positives mined from the other stream in co-training (its K nearest queued clips)")
    ubernce: bool = _f(
        False, "UberNCE oracle: positives = queue clips of the same class label, in every phase (upper bound)"
    )
    same_video_positive: bool = _f(
        True,
        "co-training: queue entries of the query's own video are positives, never mined (CoCLR code: mask_source)",
    )
    same_source: bool = _f(
        True,
        "with same_video_positive: 'own video' = its source video (UCF101 clip group, CoCLR video_source.json)",
    )
    mine_when_full: bool = _f(
        True, "co-training mines top-K positives only once the queue is full (CoCLR code: queue_is_full)"
    )
    step_when_full: bool = _f(
        True,
        "co-training: no backward or optimiser step until the queue is full (CoCLR main_coclr.py); lr still advances",
    )
    drop_own_key_prob: float = _f(
        0.9,
        "co-training: per-step probability that rows with other positives drop their own key (CoCLR: 0.9)",
    )
    mine_key_clip: bool = _f(
        True,
        "co-training mines with, and queues, the frozen stream's feature of the key clip (false = the query clip)",
    )
    ubernce_loss: UberNceLoss = _f(
        UberNceLoss.mean_log_prob,
        "UberNCE's loss over a row's positives: mean_log_prob (CoCLR main_nce.py) | log_sum_prob (eq. 2)",
    )

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.queue_size > 0, "method.coclr.queue_size", "must be > 0 (the queue holds the negatives)"),
            (self.topk >= 0, "method.coclr.topk", "must be >= 0"),
            (self.temperature > 0, "method.coclr.temperature", "must be > 0"),
            (0 <= self.momentum < 1, "method.coclr.momentum", "must be in [0, 1)"),
            (0 <= self.drop_own_key_prob <= 1, "method.coclr.drop_own_key_prob", "must be in [0, 1]"),
        ]


@dataclass
class GocaConfig:
    variant: GocaVariant = _f(GocaVariant.goca, "goca | sview | avg | sep")
    lambda1: float = _f(0.02, "entropy weight of the prior Sinkhorn")
    lambda2: float = _f(0.03, "prior weight of the prior Sinkhorn")
    proto_reg_steps: int = _f(
        0,
        "prototype regulariser steps after every optimiser step (0 = the GOCA paper: regularised once, then fixed)",
    )
    proto_reg_lr: float = _f(
        0.1, "learning rate of the regulariser steps after every optimiser step (constant, on eq. 11's mean)"
    )
    proto_reg_init_steps: int = _f(
        1000, "prototype regularisation steps at the start of training (the paper's one-off initialisation)"
    )
    proto_reg_init_lr: float = _f(
        0.1,
        "step size of the one-off initialisation (per prototype with proto_reg_init_anneal, else on the mean)",
    )
    proto_reg_init_anneal: bool = _f(
        True,
        "one-off initialisation per prototype with a cosine-annealed step (false = constant steps on eq. 11's mean)",
    )
    epochs: int = _f(
        0, "epochs of the joint phase (0 = half the epochs of the schedule's two stages; GOCA paper: 500)"
    )
    queue_start_epoch: int = _f(100, "epoch of the joint phase at which the queue starts")

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.lambda1 > 0, "method.goca.lambda1", "must be > 0"),
            (self.lambda2 >= 0, "method.goca.lambda2", "must be >= 0"),
            (self.proto_reg_steps >= 0, "method.goca.proto_reg_steps", "must be >= 0"),
            (self.proto_reg_init_steps >= 0, "method.goca.proto_reg_init_steps", "must be >= 0"),
            (self.proto_reg_lr > 0, "method.goca.proto_reg_lr", "must be > 0"),
            (self.proto_reg_init_lr > 0, "method.goca.proto_reg_init_lr", "must be > 0"),
            (self.epochs >= 0, "method.goca.epochs", "must be >= 0"),
        ]


@dataclass
class MethodConfig:
    """Which method trains, and one section per method (its own settings and schedule) plus the SwAV head that
    ViCC and GOCA share."""

    name: MethodName = _f(MethodName.vicc, "self-supervised method: vicc | coclr | goca")
    swav: SwavConfig = field(default_factory=SwavConfig)
    vicc: ViccConfig = field(default_factory=ViccConfig)
    coclr: CoclrConfig = field(default_factory=CoclrConfig)
    goca: GocaConfig = field(default_factory=GocaConfig)


@dataclass
class ScheduleConfig:
    """The two-stage schedule every method reads: stage 1 (one phase per stream) then ``cross_cycles`` x (RGB,
    flow) alternations. What a method makes of it (its phases, queue starts, freezing) is its own section's."""

    phase: Phase = _f(Phase.all, "what to run: all | rgb1 | flow1 | cross (each resumes the previous phase)")
    single_epochs: int = _f(300, "epochs of each single-stream phase")
    cross_cycles: int = _f(2, "cross-stream cycles (each: RGB then flow)")
    cross_epochs: int = _f(100, "epochs of each cross-stream alternation")
    steps_per_epoch: int = _f(0, "cap on steps per epoch (0 = one clip pair per video)")


@dataclass
class OptimConfig:
    name: Optimizer = _f(Optimizer.lars, "optimizer: lars | sgd | adam")
    lr: float = _f(0.6, "base learning rate")
    final_lr: float = _f(6e-4, "learning rate at the end of the cosine schedule")
    warmup_epochs: float = _f(0.0, "linear warmup epochs at the start of each phase")
    schedule: LrScheduleKind = _f(
        LrScheduleKind.cosine,
        "lr schedule of every phase: cosine (optim.lr -> optim.final_lr, ViCC) | step (x optim.gamma, CoCLR)",
    )
    milestones: list[int] = _f(
        [],
        "optim.schedule=step: epochs of a single-stream or joint phase at which the lr drops by optim.gamma",
    )
    cross_milestones: list[int] = _f(
        [],
        "optim.schedule=step: the same for each cross-stream alternation",
    )
    gamma: float = _f(0.1, "optim.schedule=step: lr factor at each milestone (CoCLR: 0.1)")
    weight_decay: float = _f(
        1e-6, "weight decay (on every parameter unless optim.exclude_bias_norm, as in the released ViCC code)"
    )
    exclude_bias_norm: bool = _f(
        False,
        "biases and norm parameters get neither weight decay nor LARS adaptation; false = released",
    )
    momentum: float = _f(0.9, "SGD/LARS momentum")
    trust_coefficient: float = _f(0.001, "LARS trust coefficient")
    scale_lr: bool = _f(False, "scale lr linearly with global batch / base_batch")
    base_batch: int = _f(256, "reference global batch of the lr scaling")


@dataclass
class TrainConfig:
    batch_size: int = _f(48, "clips per rank per step")
    amp: Amp = _f(Amp.bf16, "mixed precision: off | bf16 | fp16 (with GradScaler)")
    channels_last: bool = _f(True, "use torch.channels_last_3d activations")
    compile: bool = _f(False, "torch.compile the encoders")
    sync_bn: bool = _f(False, "SyncBatchNorm across ranks")
    bn_per_view: bool = _f(
        True,
        "each view its own BatchNorm batch (released); false = all views in one forward (faster)",
    )
    batch_shuffle: bool = _f(
        True,
        "shuffle the batch across ranks around the encoders (BN leakage); no-op on one rank or with sync_bn",
    )
    batch_shuffle_views: ShuffleViews = _f(
        ShuffleViews.all,
        "with train.batch_shuffle: shuffle all views' forwards | second (released: the second view only)",
    )
    seed: int = _f(0, "global seed")
    device: Device = _f(Device.auto, "training device: auto (this rank's GPU when present) | cpu | gpu")
    out_dir: str = _f("runs/default", "run folder: checkpoints, TensorBoard logs, results")
    resume: str = _f("auto", "auto (latest checkpoint in out_dir) | never | path to a checkpoint")
    ckpt_every_steps: int = _f(
        500, "checkpoint every N steps (and always at phase ends); 0 = phase ends only"
    )
    launcher_check_s: float = _f(
        5.0,
        "under torchrun: every N s check the launcher lives; once gone, checkpoint and exit 3 (0 = off)",
    )
    log_every_steps: int = _f(10, "TensorBoard scalars every N steps")
    progress: bool = _f(True, "progress bar on rank 0")
    deterministic: bool = _f(
        False,
        "GPU: deterministic cuDNN, no TF32 (slower); false = cudnn.benchmark and TF32 (CPU: always)",
    )


@dataclass
class RetrievalEvalConfig:
    """kNN retrieval: test videos query train videos (defaults: the released ``test_retrieval``'s features)."""

    recall_ks: list[int] = _f([1, 5, 10, 20, 50], "k of Recall@k")
    knn_chunk: int = _f(1024, "queries per block of the chunked nearest-neighbour search")
    centre_each: bool = _f(
        True, "centre test and train features each by its own mean (released); false: by the train mean"
    )
    clip_l2norm: bool = _f(
        True, "L2-normalise each clip's feature before the per-video average (released); false: raw"
    )
    crop: EvalCrop = _f(EvalCrop.center, "spatial crop of the retrieval clips: center (released) | tencrop")
    train_windows: EvalWindows = _f(
        EvalWindows.random,
        "where a train (gallery) video's clips lie: random (released, from train.seed) | uniform | overlap",
    )
    train_clips: int = _f(
        1, "clips per train (gallery) video: 1 (released) | 0 = data.eval.clips, as test videos"
    )


@dataclass
class LinearEvalConfig:
    """The linear probe on the frozen encoder (defaults: the released ``lin-*.sh``)."""

    epochs: int = _f(100, "epochs of the linear probe")
    augment: bool = _f(
        True, "train on augmented train clips through the frozen encoder; false: on cached eval features"
    )
    optim: EvalOptim = _f(EvalOptim.sgd, "optimiser: sgd (momentum 0.9) | adam")
    lr: float = _f(0.1, "learning rate")
    milestones: list[int] = _f([60, 80], "epochs at which the lr drops x0.1; empty = cosine to 0")
    l2norm: bool = _f(
        True, "L2-normalised features through an affine BatchNorm1d; false: parameter-free BatchNorm1d"
    )
    test_clips: bool = _f(
        True,
        "every test clip and crop through encoder and probe, probabilities averaged; false: cached features",
    )
    weight_decay: float = _f(1e-3, "weight decay")
    batch_size: int = _f(256, "videos per step on cached features (augment=false)")


@dataclass
class FinetuneEvalConfig:
    """End-to-end finetuning (defaults: the released ``ft-*.sh``)."""

    epochs: int = _f(500, "epochs of end-to-end finetuning")
    dropout: float = _f(0.9, "dropout before the classifier")
    released_init: bool = _f(
        True, "classifier initialised N(0, 0.01), zero bias; false: PyTorch's nn.Linear init"
    )
    optim: EvalOptim = _f(EvalOptim.sgd, "optimiser: sgd (momentum 0.9) | adam")
    lr: float = _f(0.1, "learning rate (of the classifier; the encoder's: x encoder_lr_scale)")
    milestones: list[int] = _f([200, 300, 400, 450], "epochs at which the lr drops x0.1; empty = cosine to 0")
    weight_decay: float = _f(1e-3, "weight decay")
    encoder_lr_scale: float = _f(1.0, "factor on the encoder's lr (ViCC: 1; CoCLR: 0.1)")


@dataclass
class ClusterEvalConfig:
    """Clusters of the test features against the classes: ViCC's (supp. 3.1.2) or GOCA's (4.3) protocol."""

    protocol: ClusterProtocol = _f(
        ClusterProtocol.auto,
        "hungarian (ViCC) | majority (GOCA) | auto (majority for method goca, else hungarian)",
    )
    restarts: int = _f(10, "hungarian: K-means initialisations, the one of lowest inertia kept")
    runs: int = _f(50, "majority: K-means runs (one initialisation each) averaged")
    prototypes: ClusterPrototypes = _f(
        ClusterPrototypes.refit,
        "hungarian's prototypes: refit (K = classes, on the frozen encoder) | trained",
    )
    refit_epochs: int = _f(100, "prototypes=refit: epochs over the train videos' embeddings")
    refit_lr: float = _f(0.1, "prototypes=refit: SGD (momentum 0.9) learning rate")
    refit_batch_size: int = _f(256, "prototypes=refit: train videos per Sinkhorn batch and SGD step")


@dataclass
class PlotsEvalConfig:
    """The pictures: ``tsne`` and ``grid``."""

    tsne_max_points: int = _f(2000, "test videos drawn in the t-SNE plot (random subset above this)")
    grid_queries: int = _f(6, "query rows of the retrieval grid picture")


@dataclass
class EvalConfig:
    after_phase: bool = _f(True, "kNN retrieval after each training phase")
    batch_size: int = _f(32, "clips per rank per evaluation (feature / test) step")
    amp: Amp = _f(Amp.off, "precision of every evaluation forward: off = fp32 (released) | bf16 | fp16")
    train_batch_size: int = _f(128, "clips per optimiser step of the linear probe (augmented) and finetuning")
    train_forward_batch: int = _f(
        32, "clips per forward within such a step, gradients summed; 0 = one forward"
    )
    train_batch_flip: bool = _f(
        True, "linear probe / finetune: one coin per step flips the whole batch (released)"
    )
    released_train_augment: bool = _f(
        True, "probe / finetune train clips as the released classifier's; false: pretraining's without blur"
    )
    cache_dir: str = _f("", "feature cache folder (empty = <run>/eval/cache)")
    retrieval: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)
    linear: LinearEvalConfig = field(default_factory=LinearEvalConfig)
    finetune: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    cluster: ClusterEvalConfig = field(default_factory=ClusterEvalConfig)
    plots: PlotsEvalConfig = field(default_factory=PlotsEvalConfig)


@dataclass
class ProfileConfig:
    nvtx: bool = _f(False, "NVTX ranges around data, forward (incl. the loss head), backward, optimizer step")
    steps: list[int] = _f([], "[start, stop] steps bracketed by cudaProfilerStart/Stop (empty = off)")
    torch_trace: str = _f("", "folder for a torch.profiler trace of `steps` (empty = off)")


@dataclass
class KernelsConfig:
    backend: KernelBackend = _f(KernelBackend.auto, "loss head: auto | triton | torch")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


# ----------------------------------------------------------------------------------------------- moved keys
# Keys that moved to another place in the tree (old dotted key -> new dotted key). A config file or override that
# names an old key is an error naming the new one; a config saved by an older run (a checkpoint, a record) is read
# through the map, so old runs stay usable. One block per section, so the moves of one room read together.
MOVED: dict[str, str] = {
    # -- data: data.augment, data.eval
    "data.crop_scale": "data.augment.crop_scale",
    "data.aspect_ratio": "data.augment.aspect_ratio",
    "data.crop": "data.augment.crop",
    "data.same_start_prob": "data.augment.same_start_prob",
    "data.hflip": "data.augment.hflip",
    "data.align_streams": "data.augment.align_streams",
    "data.flow_photometric": "data.augment.flow_photometric",
    "data.flow_flip_negate": "data.augment.flow_flip_negate",
    "data.aug_controller": "data.augment.aug_controller",
    "data.strong_aug_prob": "data.augment.strong_aug_prob",
    "data.color_jitter_prob": "data.augment.color_jitter_prob",
    "data.brightness": "data.augment.brightness",
    "data.contrast": "data.augment.contrast",
    "data.saturation": "data.augment.saturation",
    "data.hue": "data.augment.hue",
    "data.color_jitter": "data.augment.color_jitter",
    "data.grayscale_prob": "data.augment.grayscale_prob",
    "data.grayscale": "data.augment.grayscale",
    "data.grayscale_per": "data.augment.grayscale_per",
    "data.blur_prob": "data.augment.blur_prob",
    "data.blur_sigma": "data.augment.blur_sigma",
    "data.eval_windows": "data.eval.windows",
    "data.eval_clips": "data.eval.clips",
    "data.eval_crop": "data.eval.crop",
    "data.eval_color_jitter_prob": "data.eval.color_jitter_prob",
    "data.eval_color_jitter": "data.eval.color_jitter",
    "data.eval_crop_fraction": "data.eval.crop_fraction",
    # -- eval: eval.retrieval, eval.linear, eval.finetune, eval.cluster, eval.plots
    "eval.recall_ks": "eval.retrieval.recall_ks",
    "eval.knn_chunk": "eval.retrieval.knn_chunk",
    "eval.retrieval_centre_each": "eval.retrieval.centre_each",
    "eval.retrieval_clip_l2norm": "eval.retrieval.clip_l2norm",
    "eval.retrieval_crop": "eval.retrieval.crop",
    "eval.retrieval_train_windows": "eval.retrieval.train_windows",
    "eval.retrieval_train_clips": "eval.retrieval.train_clips",
    "eval.linear_epochs": "eval.linear.epochs",
    "eval.linear_augment": "eval.linear.augment",
    "eval.linear_optim": "eval.linear.optim",
    "eval.linear_lr": "eval.linear.lr",
    "eval.linear_milestones": "eval.linear.milestones",
    "eval.linear_l2norm": "eval.linear.l2norm",
    "eval.linear_test_clips": "eval.linear.test_clips",
    "eval.linear_weight_decay": "eval.linear.weight_decay",
    "eval.linear_batch_size": "eval.linear.batch_size",
    "eval.finetune_epochs": "eval.finetune.epochs",
    "eval.finetune_dropout": "eval.finetune.dropout",
    "eval.finetune_released_init": "eval.finetune.released_init",
    "eval.finetune_optim": "eval.finetune.optim",
    "eval.finetune_lr": "eval.finetune.lr",
    "eval.finetune_milestones": "eval.finetune.milestones",
    "eval.finetune_weight_decay": "eval.finetune.weight_decay",
    "eval.finetune_encoder_lr_scale": "eval.finetune.encoder_lr_scale",
    "eval.cluster_protocol": "eval.cluster.protocol",
    "eval.kmeans_restarts": "eval.cluster.restarts",
    "eval.cluster_runs": "eval.cluster.runs",
    "eval.cluster_prototypes": "eval.cluster.prototypes",
    "eval.cluster_refit_epochs": "eval.cluster.refit_epochs",
    "eval.cluster_refit_lr": "eval.cluster.refit_lr",
    "eval.cluster_refit_batch_size": "eval.cluster.refit_batch_size",
    "eval.tsne_max_points": "eval.plots.tsne_max_points",
    "eval.grid_queries": "eval.plots.grid_queries",
    # -- method: each method's own section (its schedule included), the SwAV head ViCC and GOCA share
    "method.temperature": "method.swav.temperature",
    "method.epsilon": "method.swav.epsilon",
    "method.sinkhorn_iters": "method.swav.sinkhorn_iters",
    "method.queue_size": "method.swav.queue_size",
    "method.queue_when_full": "method.swav.queue_when_full",
    "schedule.single_queue_start_rgb": "method.vicc.queue_start_rgb",
    "schedule.single_queue_start_flow": "method.vicc.queue_start_flow",
    "schedule.single_freeze_prototypes": "method.vicc.single_freeze_prototypes",
    "schedule.single_lr_epochs": "method.vicc.single_lr_epochs",
    "schedule.cross_queue_start": "method.vicc.cross_queue_start",
    "schedule.cross_batch_size": "method.vicc.cross_batch_size",
}


def _leaves(d: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf of a nested dict."""
    if not isinstance(d, dict):
        return [prefix[:-1]] if prefix else []
    return [k for key, v in d.items() for k in _leaves(v, f"{prefix}{key}.")]


def _moved_error(key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: config key '{key}' is now '{MOVED[key]}'")


def _pop(d: dict[str, Any], parts: list[str]) -> Any:
    node = d
    for part in parts[:-1]:
        node = node[part]
    return node.pop(parts[-1])


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with its moved keys at their new places (a deep copy; the input is not changed)."""
    out = copy.deepcopy(d)
    for old in [k for k in _leaves(out) if k in MOVED]:
        value = _pop(out, old.split("."))
        node = out
        *parents, leaf = MOVED[old].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, value)  # a dict holding both forms keeps the new one
    return out


# ----------------------------------------------------------------------------------------------- loading
def _one_line(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0].strip()
    return f"config key '{key}': {msg}" if key else f"config: {msg}"


def _unbool_enums(node: DictConfig, cls: type) -> None:
    """YAML 1.1 reads ``off``/``on``/``yes``/``no`` as booleans; where the schema wants an Enum, restore the
    word the user wrote (so ``train.amp=off`` means ``Amp.off``)."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in list(node.keys()):
        kind = hints.get(str(key), types.get(str(key)))
        value = node[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(value, DictConfig):
            _unbool_enums(value, kind)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum) and isinstance(value, bool):
            node[key] = "on" if value else "off"


def load(
    path: str | Path | Sequence[str | Path] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Schema defaults <- YAML file(s) <- ``key=value`` overrides, validated; returns a typed :class:`Config`.

    ``path`` may be a list of YAML files, merged in order (a base config, then overlays such as
    ``configs/compare/coclr.yaml``). ``path=None`` loads nothing but the schema defaults.
    """
    schema = OmegaConf.structured(Config)
    layers: list[DictConfig] = [schema]
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    for one in paths:
        p = Path(one)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = OmegaConf.load(p)
        except Exception as exc:  # a YAML syntax error names the file and line
            raise ConfigError(f"config file {p}: {str(exc).splitlines()[0]}") from None
        if isinstance(loaded, DictConfig):
            for key in _leaves(OmegaConf.to_container(loaded)):
                if key in MOVED:
                    raise _moved_error(key, f"config file {p}")
            _unbool_enums(loaded, Config)
        layers.append(loaded)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key = item.split("=", 1)[0]
        if key.lstrip("+~") in MOVED:
            raise _moved_error(key.lstrip("+~"), f"override '{item}'")
        try:
            layer = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override '{key}': {str(exc).splitlines()[0]}") from None
        _unbool_enums(layer, Config)
        layers.append(layer)
    try:
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def _increasing(epochs: Sequence[int]) -> bool:
    """Milestones: strictly increasing epochs > 0 (an lr drop at epoch 0 would just be a smaller optim.lr)."""
    return all(e > 0 for e in epochs) and all(a < b for a, b in zip(epochs, epochs[1:]))


def _training_checks(cfg: Config) -> list[tuple[bool, str, str]]:
    o, t, p = cfg.optim, cfg.train, cfg.profile
    return [
        (o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0"),
        (0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)"),
        (o.trust_coefficient > 0, "optim.trust_coefficient", "must be > 0"),
        (o.weight_decay >= 0, "optim.weight_decay", "must be >= 0"),
        (o.base_batch > 0, "optim.base_batch", "must be > 0"),
        (o.final_lr <= o.lr, "optim.final_lr", "must be <= optim.lr"),
        (t.ckpt_every_steps >= 0, "train.ckpt_every_steps", "must be >= 0 (0 = phase ends only)"),
        (t.log_every_steps > 0, "train.log_every_steps", "must be > 0"),
        (t.launcher_check_s >= 0, "train.launcher_check_s", "must be >= 0 (0 = off)"),
        (bool(t.out_dir), "train.out_dir", "must not be empty"),
        (
            len(p.steps) != 2 or 0 <= p.steps[0] < p.steps[1],
            "profile.steps",
            "must be [start, stop] with 0 <= start < stop",
        ),
        (not p.torch_trace or bool(p.steps), "profile.torch_trace", "needs profile.steps = [start, stop]"),
    ]


def validate(cfg: Config) -> None:
    """Every value check the type system cannot express, in one pass when the config loads (each method's
    section checks its own keys); each failure names its key. Checks that need the run's environment (a
    checkpoint file, CUDA, the world size) are ``engine.trainer.validate_training``'s."""
    checks: list[tuple[bool, str, str]] = [
        (cfg.data.num_frames > 0, "data.num_frames", "must be > 0"),
        (cfg.data.stride > 0, "data.stride", "must be > 0"),
        (cfg.data.crop_size > 0, "data.crop_size", "must be > 0"),
        (
            len(cfg.data.augment.crop_scale) == 2
            and 0 < cfg.data.augment.crop_scale[0] <= cfg.data.augment.crop_scale[1] <= 1,
            "data.augment.crop_scale",
            "must be [min, max] with 0 < min <= max <= 1",
        ),
        (0 <= cfg.data.augment.same_start_prob <= 1, "data.augment.same_start_prob", "must be in [0, 1]"),
        (0 <= cfg.data.augment.strong_aug_prob <= 1, "data.augment.strong_aug_prob", "must be in [0, 1]"),
        (cfg.data.threads > 0, "data.threads", "must be > 0"),
        (cfg.data.eval.clips > 0, "data.eval.clips", "must be > 0"),
        (
            cfg.eval.retrieval.train_clips >= 0,
            "eval.retrieval.train_clips",
            "must be >= 0 (0 = data.eval.clips)",
        ),
        (0 < cfg.data.eval.crop_fraction <= 1, "data.eval.crop_fraction", "must be in (0, 1]"),
        (0 <= cfg.data.eval.color_jitter_prob <= 1, "data.eval.color_jitter_prob", "must be in [0, 1]"),
        (
            len(cfg.data.eval.color_jitter) == 4
            and min(cfg.data.eval.color_jitter) >= 0
            and cfg.data.eval.color_jitter[3] <= 0.5,
            "data.eval.color_jitter",
            "must be [brightness, contrast, saturation, hue], each >= 0, hue <= 0.5",
        ),
        (cfg.model.num_prototypes > 0, "model.num_prototypes", "must be > 0"),
        (cfg.model.proj_dim > 0, "model.proj_dim", "must be > 0"),
        *cfg.method.swav.checks(),
        *cfg.method.vicc.checks(),
        *cfg.method.coclr.checks(),
        *cfg.method.goca.checks(),
        (cfg.schedule.single_epochs >= 0, "schedule.single_epochs", "must be >= 0"),
        (cfg.schedule.cross_epochs >= 0, "schedule.cross_epochs", "must be >= 0"),
        (cfg.schedule.cross_cycles >= 0, "schedule.cross_cycles", "must be >= 0"),
        (cfg.schedule.steps_per_epoch >= 0, "schedule.steps_per_epoch", "must be >= 0 (0 = whole epoch)"),
        (cfg.optim.lr > 0, "optim.lr", "must be > 0"),
        (cfg.optim.final_lr >= 0, "optim.final_lr", "must be >= 0"),
        (0 < cfg.optim.gamma <= 1, "optim.gamma", "must be in (0, 1]"),
        (_increasing(cfg.optim.milestones), "optim.milestones", "must be increasing epochs > 0"),
        (_increasing(cfg.optim.cross_milestones), "optim.cross_milestones", "must be increasing epochs > 0"),
        (cfg.train.batch_size > 1, "train.batch_size", "must be > 1 (Sinkhorn needs a batch)"),
        (
            not cfg.train.batch_shuffle
            or cfg.train.batch_shuffle_views is ShuffleViews.all
            or cfg.train.bn_per_view,
            "train.batch_shuffle_views",
            "second shuffles each view's own forward after the first: needs train.bn_per_view=true (or all)",
        ),
        (
            cfg.eval.train_batch_size > 1,
            "eval.train_batch_size",
            "must be > 1 (the probe's BatchNorm needs a batch)",
        ),
        (
            cfg.eval.train_forward_batch == 0 or cfg.eval.train_forward_batch > 1,
            "eval.train_forward_batch",
            "must be 0 (the whole step) or > 1 (a BatchNorm batch)",
        ),
        (cfg.eval.cluster.restarts > 0, "eval.cluster.restarts", "must be > 0"),
        (cfg.eval.cluster.runs > 0, "eval.cluster.runs", "must be > 0"),
        (cfg.eval.cluster.refit_epochs > 0, "eval.cluster.refit_epochs", "must be > 0"),
        (cfg.eval.cluster.refit_lr > 0, "eval.cluster.refit_lr", "must be > 0"),
        (cfg.eval.cluster.refit_batch_size > 1, "eval.cluster.refit_batch_size", "must be > 1 (Sinkhorn)"),
        (len(cfg.profile.steps) in (0, 2), "profile.steps", "must be [] or [start, stop]"),
        *_training_checks(cfg),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"config key '{key}': {why}")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    out = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config saved with :func:`to_dict` (e.g. from a checkpoint), moved keys read at their new places."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(migrate(d))))
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    assert isinstance(cfg, Config)
    return cfg


def absent_keys(d: dict[str, Any]) -> list[str]:
    """Schema keys a saved config dict lacks (it was written before they existed): they take today's defaults."""

    def has(node: Any, parts: list[str]) -> bool:
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    d = migrate(d)
    return [k for k, _, _ in describe() if not has(d, k.split("."))]


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf key, in schema order: the body of ``--help``."""
    rows: list[tuple[str, str, str]] = []
    inst = cls()
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), key + ".")
        else:
            shown = value.value if isinstance(value, enum.Enum) else value
            rows.append((key, str(shown), f.metadata.get("help", "")))
    return rows


def help_text() -> str:
    rows = describe()
    width = max(len(k) for k, _, _ in rows)
    lines = ["configuration keys (override any as key=value):"]
    lines += [f"  {k:<{width}}  {h} [default: {d}]" for k, d, h in rows]
    return "\n".join(lines)


__all__ = [
    "MISSING",
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "Config",
    "ConfigError",
    "load",
    "validate",
    "to_yaml",
    "to_dict",
    "from_dict",
    "migrate",
    "MOVED",
    "describe",
    "help_text",
]
