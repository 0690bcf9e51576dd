"""Choose and build the input pipeline: the one entry point the engine and evaluation call.

Contract (the engine and the evaluation build against this; the data issue implements it):

    loader = build_loader(cfg, split="train", mode="train", streams=(Stream.rgb, Stream.flow),
                          num_views=2, rank=0, world_size=1, device=torch.device("cpu"))
    len(loader)          # steps per epoch, known in advance
    loader.num_samples   # videos in the split (all ranks)
    loader.set_epoch(e)  # reshuffle with a seed derived from (cfg.train.seed, e); restartable
    for batch in loader: # vicc_fast.data.batch.Batch
        ...
"""

from __future__ import annotations
