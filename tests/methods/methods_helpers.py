"""Small configs and batches for the method tests (tiny backbone, tiny clips: CPU milliseconds per step)."""

import torch

from vicc_fast.config import Backbone, Config, KernelBackend, Stream
from vicc_fast.data.batch import Batch
from vicc_fast.methods.base import PhaseSpec, StepState

torch.set_num_threads(1)  # small ops: 2 OpenMP threads on a busy 2-core box can be ~80x slower

CLIP = (3, 4, 16, 16)  # C, T, H, W


def small_config(**method) -> Config:
    cfg = Config()
    cfg.model.backbone = Backbone.tiny
    cfg.model.tiny_width = 8
    cfg.model.proj_hidden = 16
    cfg.model.proj_dim = 8
    cfg.model.num_prototypes = 6
    cfg.method.swav.queue_size = 12
    cfg.kernels.backend = KernelBackend.torch
    for k, v in method.items():  # method.name, or a key of the shared SwAV head (method.swav)
        section = cfg.method if k == "name" else cfg.method.swav
        assert hasattr(section, k), k
        setattr(section, k, v)
    return cfg


def make_batch(B: int = 4, streams=(Stream.rgb, Stream.flow), views: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        views={
            s: [
                torch.randn(B, *CLIP, generator=g).contiguous(memory_format=torch.channels_last_3d)
                for _ in range(views)
            ]
            for s in streams
        },
        label=torch.arange(B) % 2,
        index=torch.arange(B),
    )


def state_at(phase: PhaseSpec, epoch: int, step: int = 0, steps_per_epoch: int = 10) -> StepState:
    return StepState(
        phase=phase,
        epoch=epoch,
        step=step,
        global_step=epoch * steps_per_epoch + step,
        steps_per_epoch=steps_per_epoch,
    )
