"""The contract between the input pipeline and everything that consumes it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vicc_fast.config import Stream


@dataclass
class Batch:
    """One training or evaluation step's input.

    views: per stream, a list of view tensors ``[B, C, T, H, W]`` (``torch.channels_last_3d``, on the
        training device, normalised, in the configured dtype). RGB has C=3; flow has C=3 too (x, y and a
        constant channel, ordered by ``data.flow_layout``: released (128, y, x), or (x, y, 0)). In train mode, view ``i`` of RGB and view ``i`` of flow cover
        the same frames of the same video. In eval mode there is one view per stream holding
        ``B = videos x clips`` clips; ``index`` then repeats per clip.
    label: ``[B]`` int64 class labels (evaluation and tests only; training never reads them).
    index: ``[B]`` int64 video indices into the split's sample list (stable across runs).
    source: ``[B]`` int64 source-video ids (manifest.source_group: UCF101 clips cut from one long video share
        one; any other video is its own source), or None.
    """

    views: dict[Stream, list[torch.Tensor]]
    label: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        return Batch(
            views={s: [v.to(device, non_blocking=non_blocking) for v in vs] for s, vs in self.views.items()},
            label=self.label.to(device, non_blocking=non_blocking),
            index=self.index.to(device, non_blocking=non_blocking),
            source=None if self.source is None else self.source.to(device, non_blocking=non_blocking),
        )
