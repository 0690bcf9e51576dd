"""The step and scaling benchmarks measure what they claim: the parts of the breakdown add up to the step, the
steady-state StepState is the one asked for, and the communication model equals the collectives that two gloo
ranks really issue (recorded by torch.profiler). Tiny shapes, in-memory input: no timing is asserted."""

from __future__ import annotations

import argparse

import pytest

from vicc_fast import config as C
from vicc_fast.bench import scaling as SC
from vicc_fast.bench import step as S

TINY = [
    "model.tiny_width=8",
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "model.num_prototypes=12",
    "method.swav.queue_size=24",
    "train.device=cpu",
    "train.progress=false",
    "optim.name=sgd",
    "train.batch_shuffle=true",
]


def parse(argv: list[str], mod=S) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    return p.parse_args(argv)


def point(**kw) -> S.Point:
    base = dict(backbone="tiny", frames=4, stride=1, crop=32, batch=4, amp="off", channels_last=True,
                compile=False, phase="rgb1", queue=True)  # fmt: skip
    base.update(kw)
    return S.Point(**base)


def tiny_cfg(p: S.Point) -> C.Config:
    return C.load(S.BENCH_CONFIG, [*TINY, *p.overrides(), *S.FAST])


def test_grid_pairs_or_crosses() -> None:
    a = parse(["--backbone", "s3d,r21d", "--clip", "32x1,16x2", "--amp", "bf16,fp16"])
    got = {(p.backbone, p.frames, p.stride, p.amp) for p in S.grid(a)}
    assert got == {
        (b, t, s, amp) for (b, t, s) in [("s3d", 32, 1), ("r21d", 16, 2)] for amp in ("bf16", "fp16")
    }
    crossed = S.grid(parse(["--backbone", "tiny", "--clip", "8x2,4x1", "--channels-last", "on,off"]))
    assert len(crossed) == 4
    paper = S.grid(parse(["--paper"]))
    assert {(p.backbone, p.frames, p.stride, p.crop, p.batch) for p in paper} == {
        ("s3d", 32, 1, 128, 48),
        ("r21d", 16, 2, 128, 48),
    }
    # every grid point is a valid config (amp 'off' survives YAML's boolean reading)
    C.load(S.BENCH_CONFIG, [*TINY, *point(amp="off").overrides()])


@pytest.mark.parametrize("queue", [True, False])
@pytest.mark.parametrize("which", ["rgb1", "cross"])
def test_steady_state(queue: bool, which: str) -> None:
    from vicc_fast.methods import build_method

    cfg = C.load(S.BENCH_CONFIG, [*TINY, "schedule.single_epochs=20", "method.vicc.queue_start_rgb=10",
                                    "method.vicc.single_freeze_prototypes=5", "schedule.cross_epochs=20",
                                    "method.vicc.cross_queue_start=4"])  # fmt: skip
    phase = S.pick_phase(build_method(cfg), which)
    assert (phase.frozen_stream is not None) == (which == "cross")
    st = S.step_state(phase, queue)
    assert st.phase.queue_active(st.epoch) == queue
    if queue:
        assert not st.phase.prototypes_frozen(st.epoch)


def test_breakdown_adds_up_and_loss_head_is_separated() -> None:
    p = point()
    cfg = tiny_cfg(p)
    r = S.measure(cfg, p, steps=2, warmup=1, input_mode="memory")
    b = r["breakdown_ms"]
    assert r["finite"]
    for part in S.PARTS[1:]:  # data_wait of an in-memory batch may round to ~0
        assert b[part] > 0, part
    # the named parts account for the step: 'other' is loop overhead only
    assert abs(b["other"]) < 0.05 * r["step_ms"] + 5
    assert r["clips_per_s"] == pytest.approx(p.batch * 2 * 2 / (r["step_ms"] * 2 / 1000), rel=1e-6)
    assert r["views_per_video"] == 2
    # the cross phase runs 4 views: more forward work than rgb1 with the same batch
    rc = S.measure(
        tiny_cfg(point(phase="cross")), point(phase="cross"), steps=1, warmup=1, input_mode="memory"
    )
    assert rc["views_per_video"] == 4 and rc["finite"]


def test_ratios() -> None:
    f = {"clips_per_s": 30.0, "breakdown_ms": dict.fromkeys(S.PARTS, 1.0)}
    b = {"clips_per_s": 10.0, "breakdown_ms": dict.fromkeys(S.PARTS, 4.0)}
    r = S.ratios(f, b)
    assert r["clips_per_s"] == 3.0 and r["loss_head_speedup"] == 4.0


def test_comm_model_matches_collectives_of_two_gloo_ranks(tmp_path) -> None:
    """The written model of the per-step communication (BENCHMARKS.md) against what 2 ranks really send."""
    args = parse(["--ranks", "2", "--steps", "1", "--warmup", "1", "--backbone", "tiny", "--clip", "4x1",
                  "--crop", "32", "--batch", "4", *TINY], SC)  # fmt: skip
    out = SC.run(args)
    w2 = out["rows"][0]["worlds"][2]
    measured, model = w2["collectives"], w2["model"]
    assert measured["gloo:all_reduce"]["bytes_fp32_equiv"] == model["all_reduce_bytes"]
    # the batch shuffle: uneven all_to_all of the clips and of the features (forward) and their gradient
    a2a = measured["gloo:all_to_all"]
    assert a2a["bytes_fp32_equiv"] == model["all_to_all_bytes"] > 0
    # per shuffled view (train.bn_per_view): the paper config shuffles the second view only (released)
    assert a2a["calls"] == model["batch_shuffle"]["all_to_all_calls"] == 3 * 1
    assert "gloo:all_gather" not in measured and model["all_gather_bytes"] == 0
    assert model["sinkhorn"]["calls"] == 2 * 3  # MAX + SUM per iteration, paper's 3 iterations
    assert w2["clips_per_s"] > 0


def test_default_input_is_the_demo_set() -> None:
    """`python -m vicc_fast.bench step` with no data.root reads (or builds) the demo's synthetic shards."""
    demo = C.load(C.DEFAULT_CONFIG)
    cfg = C.load(S.BENCH_CONFIG, S.demo_data_overrides([]))
    assert cfg.data.root == demo.data.root and cfg.data.build_if_missing
    assert cfg.data.synthetic == demo.data.synthetic
    assert (
        cfg.model.num_prototypes == 300 and cfg.method.swav.queue_size == 1920
    )  # the paper's loss head stays
    assert S.demo_data_overrides(["data.root=/x"]) == []
