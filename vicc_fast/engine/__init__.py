"""The training engine: one loop for every Method (methods/base.py), knowing nothing about ViCC.

- trainer.py: phases -> per phase ``setup_phase``, ``requires_grad`` only on ``trainable_parameters``, a loader
  with the phase's streams/views, an optimiser, then steps of autocast forward -> ``loss`` -> backward ->
  ``after_backward`` -> optimiser -> ``after_step``; checkpoints; the per-phase evaluation hook; the results table.
- optim.py: LARS (SwAV/apex LARC, trust 0.001, no clipping; biases and norm parameters neither decayed nor
  adapted; ``torch._foreach`` math, no host sync per parameter), SGD/Adam with the same groups, warmup + cosine lr
  per step, lr scaled by global batch / base_batch when ``optim.scale_lr``.
- resume.py: which checkpoint ``train.resume=auto`` continues (a damaged last.pt falls back to the newest good
  one), each rank's own buffers, RNG states. The checkpoint file itself (save, load, checks, the run folder's
  ``checkpoints/`` layout) is ``vicc_fast/checkpoint.py``, which evaluation reads too. The rest of a run folder::

      out_dir/checkpoints/ranks/rank<r>-<step>.pt   ranks > 0: their own buffers (queues, BN statistics)
      out_dir/results.json                   evaluation results per phase
      out_dir/tb/                            TensorBoard: <phase>/<loss term>, lr, clips_per_s, data_wait_pct,
                                             grad_norm (+ the method's terms and ``Method.log_values``:
                                             ViCC's queue_active, prototypes_frozen)

- distributed.py: torchrun env -> NCCL (GPU) / gloo (CPU); ``sinkhorn_all_reduce()`` for kernels.sinkhorn; batch
  shuffle across ranks as forward hooks on the encoders, differentiable both ways.
- logging.py: tqdm bar (rank 0), TensorBoard, NVTX ranges (``profile.nvtx``: data, forward, backward, optimizer;
  methods may add their own with ``nvtx_range``), cudaProfilerStart/Stop and torch.profiler over ``profile.steps``.

Resume is exact: the RNG is re-seeded per step from (seed, rank, phase, step); the loader's order and
augmentations follow ``set_epoch``; a mid-epoch checkpoint records the next step and the resumed run skips the
batches already trained on. SIGTERM/SIGUSR1 (train.py) checkpoint after the current step and exit with code 3.
"""
