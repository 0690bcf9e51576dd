import pytest
import torch

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.engine.trainer import (
    NonFiniteLossError,
    ResumeError,
    Trainer,
    TrainingStopped,
    results_table,
    select_phases,
    validate_training,
)
from vicc_fast.methods.base import StepState

from .tiny import TinyLoader, TinyMethod, loader_factory


def make_cfg(tmp_path, *over: str) -> C.Config:
    base = [
        f"train.out_dir={tmp_path}/run",
        "train.batch_size=4",
        "train.amp='off'",
        "train.channels_last=false",
        "train.progress=false",
        "train.log_every_steps=2",
        "train.ckpt_every_steps=0",
        "eval.after_phase=false",
        "optim.lr=0.5",
        "optim.final_lr=0.05",
        "optim.warmup_epochs=0.5",
    ]
    return C.load(None, [*base, *over])


def params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_one_step_on_a_fixed_batch_lowers_the_loss(tmp_path):
    cfg = make_cfg(tmp_path, "optim.name=sgd", "optim.momentum=0", "optim.lr=0.02", "optim.final_lr=0.02")
    torch.manual_seed(0)
    m = TinyMethod(freeze=0, queue_start=5)
    tr = Trainer(cfg, m, loader_factory=loader_factory(8), tensorboard=False)
    phase = m.phases()[0]
    m.setup_phase(phase)
    batch = next(iter(TinyLoader(phase.streams, 2, 8)))
    st = StepState(phase, 0, 0, 0, 3)
    with torch.no_grad():
        before = float(m.loss(batch, st)["loss"])
    opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.02)
    from vicc_fast.engine.trainer import _FiniteTracker

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    tr._step(m, opt, scaler, m.trainable_parameters(phase), batch, st, _FiniteTracker(), True)
    with torch.no_grad():
        after = float(m.loss(batch, st)["loss"])
    assert after < before - 1e-2


def test_lars_step_through_the_trainer_lowers_the_loss(tmp_path):
    """The paper's optimiser (LARS, lr 0.6, trust 0.001) through the whole loop: loss of a fixed batch drops."""
    cfg = make_cfg(tmp_path, "optim.lr=0.6", "optim.final_lr=0.6", "optim.warmup_epochs=0", "train.amp=bf16")
    torch.manual_seed(0)
    m = TinyMethod(epochs=1, cross=False, freeze=0, queue_start=5)
    phase = m.phases()[0]
    batch = next(iter(TinyLoader(phase.streams, 2, 8)))
    st = StepState(phase, 0, 0, 0, 3)
    m.setup_phase(phase)
    with torch.no_grad():
        before = float(m.loss(batch, st)["loss"])

    class Same(TinyLoader):
        def __iter__(self):
            for _ in range(len(self)):
                yield batch

    cfg.schedule.phase = C.Phase.rgb1
    Trainer(cfg, m, loader_factory=lambda ph: Same(ph.streams, 2, 8), tensorboard=False).run()
    with torch.no_grad():
        assert float(m.loss(batch, st)["loss"]) < before


def test_phases_prototypes_queue_and_frozen_stream(tmp_path):
    cfg = make_cfg(tmp_path, "train.batch_size=4")
    torch.manual_seed(0)
    m = TinyMethod(epochs=2, freeze=1, queue_start=1)
    snaps = {}

    def hook(phase, state):
        snaps[(phase.name, state.epoch, state.step)] = params(m)

    before = params(m)
    Trainer(cfg, m, loader_factory=loader_factory(4), step_hook=hook, tensorboard=False).run()
    spe = 24 // 4
    # StepState handed to the method: queue from epoch 1, prototypes frozen in epoch 0 only
    rgb1 = [s for s in m.states if s.phase.name == "rgb1"]
    assert len(rgb1) == 2 * spe
    assert [s.phase.queue_active(s.epoch) for s in rgb1] == [False] * spe + [True] * spe
    assert [s.phase.prototypes_frozen(s.epoch) for s in rgb1] == [True] * spe + [False] * spe
    # prototypes untouched while frozen (renormalised rows aside), moving afterwards
    w0 = torch.nn.functional.normalize(before["protos.rgb.weight"], dim=1)
    assert torch.allclose(snaps[("rgb1", 0, spe - 1)]["protos.rgb.weight"], w0, atol=1e-6)
    assert not torch.allclose(snaps[("rgb1", 1, spe - 1)]["protos.rgb.weight"], w0, atol=1e-3)
    # cross-stream: the frozen flow stream never changes, not even its BN buffers or prototypes
    start = snaps[("flow1", 1, spe - 1)]
    end = snaps[("cross_rgb_c1", 1, spe - 1)]
    for k, v in start.items():
        if ".flow." in f".{k}":
            assert torch.equal(v, end[k]), k
    assert not torch.equal(start["nets.rgb.conv.weight"], end["nets.rgb.conv.weight"])
    # rgb1 never touched the flow stream
    assert torch.equal(before["nets.flow.conv.weight"], snaps[("rgb1", 1, spe - 1)]["nets.flow.conv.weight"])


class Crash(Exception):
    pass


@pytest.mark.parametrize("amp", ["'off'", "fp16"])
def test_killed_mid_phase_then_resumed_equals_uninterrupted(tmp_path, amp):
    over = ("train.ckpt_every_steps=4", f"train.amp={amp}", "train.channels_last=true")

    def fresh():
        torch.manual_seed(0)
        return TinyMethod(epochs=2, freeze=1, queue_start=1)

    cfg = make_cfg(tmp_path / "a", *over)
    ref = fresh()
    Trainer(cfg, ref, loader_factory=loader_factory(4), tensorboard=False).run()

    cfg = make_cfg(tmp_path / "b", *over)
    steps = [0]

    def killer(phase, state):
        steps[0] += 1
        if (
            phase.name == "flow1" and state.global_step == 10
        ):  # epoch 1 (queue on), step 4; checkpoint after step 7
            raise Crash

    with pytest.raises(Crash):
        Trainer(cfg, fresh(), loader_factory=loader_factory(4), step_hook=killer, tensorboard=False).run()
    last = ckpt.load(ckpt.latest_path(cfg.train.out_dir))
    assert (last["phase"], last["epoch"], last["step"]) == (
        "flow1",
        1,
        2,
    )  # mid-epoch, mid-phase, queue filled
    assert last["method"]["queue"].abs().sum() > 0
    assert last["loader_epoch"] == 2 + 1  # rgb1's two epochs, then flow1's second
    assert last["steps_per_epoch"] == 6
    other = make_cfg(tmp_path / "b", *over, "schedule.steps_per_epoch=5")
    with pytest.raises(ResumeError, match="mid-epoch with 6 steps per epoch, this run has 5"):
        Trainer(other, fresh(), loader_factory=loader_factory(4), tensorboard=False).run()
    resumed = fresh()
    torch.manual_seed(123)  # a different RNG state in the new process must not matter
    Trainer(cfg, resumed, loader_factory=loader_factory(4), tensorboard=False).run()
    want, got = ref.state_dict(), resumed.state_dict()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    final = ckpt.load(ckpt.latest_path(cfg.train.out_dir))
    assert final["completed"] == ["rgb1", "flow1", "cross_rgb_c1"]
    assert ckpt.phase_path(cfg.train.out_dir, "rgb1").is_file()


def test_nan_stops_with_phase_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, "train.ckpt_every_steps=3", "train.log_every_steps=5")
    m = TinyMethod(epochs=2, nan_at=7)
    with pytest.raises(
        NonFiniteLossError, match=r"phase rgb1 at step 7 \(epoch 1, step 1\): swap_1=nan"
    ) as e:
        Trainer(cfg, m, loader_factory=loader_factory(4), tensorboard=False).run()
    assert "last good checkpoint kept" in str(e.value)
    last = ckpt.load(ckpt.latest_path(cfg.train.out_dir))
    assert (last["phase"], last["epoch"], last["step"]) == (
        "rgb1",
        1,
        0,
    )  # written after step 5, before the NaN
    assert all(torch.isfinite(v).all() for v in last["method"].values() if v.is_floating_point())


def test_phase_selection_and_prerequisites(tmp_path):
    m = TinyMethod(epochs=1)
    names = lambda which: [p.name for p in select_phases(m.phases(), which)]  # noqa: E731
    assert names(C.Phase.all) == ["rgb1", "flow1", "cross_rgb_c1"]
    assert names(C.Phase.rgb1) == ["rgb1"] and names(C.Phase.flow1) == ["flow1"]
    assert names(C.Phase.cross) == ["cross_rgb_c1"]
    cfg = make_cfg(tmp_path, "schedule.phase=cross")
    with pytest.raises(ResumeError, match="cross_rgb_c1 starts from the models of rgb1"):
        Trainer(cfg, TinyMethod(epochs=1), loader_factory=loader_factory(4), tensorboard=False).run()
    for ph in ("rgb1", "flow1", "cross"):
        cfg = make_cfg(tmp_path, f"schedule.phase={ph}")
        Trainer(cfg, TinyMethod(epochs=1), loader_factory=loader_factory(4), tensorboard=False).run()
    assert ckpt.load(ckpt.latest_path(cfg.train.out_dir))["completed"] == ["rgb1", "flow1", "cross_rgb_c1"]


def test_eval_hook_results_and_table(tmp_path):
    cfg = make_cfg(tmp_path, "eval.after_phase=true")
    calls = []

    def evaluate(cfg, method, phase, rank, world, device):
        calls.append(phase.name)
        out = {f"{phase.train_stream.value}/R@1": 0.1 * len(calls), f"{phase.train_stream.value}/R@5": 0.5}
        if phase.frozen_stream is not None:
            out.update({"flow/R@1": 0.7, "rf_sum/R@1": 0.9, "rf_sum/R@5": 0.95, "rf_concat/R@1": 0.8})
        return out

    m = TinyMethod(epochs=1)
    res = Trainer(cfg, m, loader_factory=loader_factory(4), evaluate=evaluate, tensorboard=False).run()
    assert calls == ["rgb1", "flow1", "cross_rgb_c1"]
    lines = results_table(res, m).splitlines()
    assert lines[0].split() == ["R@1", "R@5"]
    assert [ln.split() for ln in lines[1:]] == [
        ["RGB-1", "0.10", "0.50"],
        ["Flow-1", "0.20", "0.50"],
        ["RGB-2", "0.30", "0.50"],
        ["R+F", "0.90", "0.95"],
    ]
    assert (tmp_path / "run" / "results.json").is_file()
    # a finished run resumes to nothing new and keeps its results
    res2 = Trainer(cfg, TinyMethod(epochs=1), loader_factory=loader_factory(4), evaluate=evaluate).run()
    assert calls == ["rgb1", "flow1", "cross_rgb_c1"] and res2 == res


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ("optim.momentum=1.5", "optim.momentum"),
        ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
        ("optim.final_lr=2.0", "optim.final_lr"),
        ("train.log_every_steps=0", "train.log_every_steps"),
        ("train.launcher_check_s=-1", "train.launcher_check_s"),
        ("train.resume=/nonexistent/x.pt", "train.resume"),
        ("profile.steps=[5,2]", "profile.steps"),
        ("profile.torch_trace=/tmp/x", "profile.torch_trace"),
        ("schedule.steps_per_epoch=-2", "schedule.steps_per_epoch"),
    ],
)
def test_bad_training_values_fail_before_any_work(tmp_path, over, key):
    """Every value is checked when the config loads (config.validate); the ones that need the run's
    environment (a checkpoint file, CUDA, the world size) by validate_training, which train.py calls first."""
    with pytest.raises(C.ConfigError, match=f"config key '{key}'"):
        validate_training(make_cfg(tmp_path, over))
    assert not (tmp_path / "run").exists()


def test_sync_bn_on_cpu_ranks_is_refused(tmp_path):
    cfg = make_cfg(tmp_path, "train.sync_bn=true")
    with pytest.raises(C.ConfigError, match="train.sync_bn"):
        validate_training(cfg, world_size=2, device=torch.device("cpu"))
    validate_training(cfg, world_size=1, device=torch.device("cpu"))


def test_tensorboard_scalars_and_torch_profiler_trace(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trace = tmp_path / "trace"
    cfg = make_cfg(tmp_path, "schedule.phase=rgb1", "profile.steps=[2,4]", f"profile.torch_trace={trace}")
    Trainer(cfg, TinyMethod(epochs=1), loader_factory=loader_factory(4)).run()
    ea = EventAccumulator(str(tmp_path / "run" / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for t in ("loss", "swap_0", "lr", "clips_per_s", "data_wait_pct", "grad_norm", "queue_active"):
        assert f"rgb1/{t}" in tags, t
    lrs = [e.value for e in ea.Scalars("rgb1/lr")]
    assert lrs[0] > lrs[-1] and len(lrs) == 3  # 6 steps, logged every 2
    assert (trace / "trace_rank0.json").stat().st_size > 0


def test_stop_request_checkpoints_then_resume_is_exact(tmp_path):
    """SIGTERM/SIGUSR1 (train.py wires them to request_stop): checkpoint after the current step, stop, resume."""

    def fresh():
        torch.manual_seed(0)
        return TinyMethod(epochs=2, cross=False)

    cfg = make_cfg(tmp_path / "a", "schedule.phase=rgb1")
    ref = fresh()
    Trainer(cfg, ref, loader_factory=loader_factory(4), tensorboard=False).run()
    cfg = make_cfg(tmp_path / "b", "schedule.phase=rgb1")
    holder = {}

    def ask(phase, state):
        if state.global_step == 8:
            holder["t"].request_stop()

    holder["t"] = Trainer(cfg, fresh(), loader_factory=loader_factory(4), step_hook=ask, tensorboard=False)
    with pytest.raises(TrainingStopped, match="after step 8"):
        holder["t"].run()
    last = ckpt.load(ckpt.latest_path(cfg.train.out_dir))
    assert (last["phase"], last["epoch"], last["step"]) == ("rgb1", 1, 3)
    resumed = fresh()
    Trainer(cfg, resumed, loader_factory=loader_factory(4), tensorboard=False).run()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_step_schedule_through_the_trainer_and_an_exact_resume(tmp_path, monkeypatch):
    """optim.schedule=step: every step's lr is base x gamma^(milestones passed), milestones in epochs of each
    phase (optim.milestones for rgb1/flow1, optim.cross_milestones for the cross phase); killed mid-phase after
    the drop and resumed, the run ends with the uninterrupted run's parameters (the rate is a function of the
    step alone)."""
    import vicc_fast.engine.trainer as trainer_mod

    over = (
        "train.ckpt_every_steps=4",
        "optim.schedule=step",
        "optim.warmup_epochs=0",
        "optim.milestones=[1]",
        "optim.cross_milestones=[1]",
        "optim.gamma=0.5",
    )
    seen: list[float] = []
    real_set_lr = trainer_mod.set_lr

    def record(opt, lr):  # noqa: ANN001, ANN202
        seen.append(lr)
        real_set_lr(opt, lr)

    monkeypatch.setattr(trainer_mod, "set_lr", record)

    def fresh():
        torch.manual_seed(0)
        return TinyMethod(epochs=2, freeze=1, queue_start=1)

    ref = fresh()
    cfg = make_cfg(tmp_path / "a", *over)
    Trainer(cfg, ref, loader_factory=loader_factory(4), tensorboard=False).run()
    rates = list(seen)
    assert len(rates) == 3 * 2 * 6  # three phases of 2 epochs x 6 steps
    for p in range(3):  # each phase: epoch 0 at 0.5, epoch 1 at 0.25 (the cross phase by cross_milestones)
        assert rates[12 * p : 12 * p + 12] == pytest.approx([0.5] * 6 + [0.25] * 6)

    cfg = make_cfg(tmp_path / "b", *over)

    def killer(phase, state):  # noqa: ANN001, ANN202
        if phase.name == "flow1" and state.global_step == 10:  # after the drop; checkpoint after step 7
            raise Crash

    with pytest.raises(Crash):
        Trainer(cfg, fresh(), loader_factory=loader_factory(4), step_hook=killer, tensorboard=False).run()
    seen.clear()
    resumed = fresh()
    Trainer(cfg, resumed, loader_factory=loader_factory(4), tensorboard=False).run()
    assert seen[:4] == pytest.approx([0.25] * 4)  # flow1 resumes at step 8, past the drop
    want, got = ref.state_dict(), resumed.state_dict()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_a_phase_batch_size_reaches_its_loader_and_the_lr_keeps_train_batch_size(tmp_path, monkeypatch):
    """PhaseSpec.batch_size: the phase's loader gets that many clips per rank (0 = train.batch_size). ViCC sets
    it from method.vicc.cross_batch_size in its cross-stream phases (released cross.sh: 24, single-stream 48).
    The lr scaling keeps reading train.batch_size, so the cross phases run the released lr 0.6 at 4 x 24."""
    import dataclasses

    import vicc_fast.data.loader as loader_mod
    from vicc_fast.engine.optim import build_schedule
    from vicc_fast.engine.trainer import phase_batch_size
    from vicc_fast.methods.vicc import vicc_phases

    asked = []
    monkeypatch.setattr(loader_mod, "build_loader", lambda cfg, **kw: asked.append(cfg.train.batch_size))
    m = TinyMethod()
    single, cross = m.phases()[0], dataclasses.replace(m.phases()[-1], batch_size=4)
    cfg = make_cfg(tmp_path, "train.batch_size=8")
    tr = Trainer(cfg, m, tensorboard=False)
    tr._default_loader(single), tr._default_loader(cross)
    assert asked == [8, 4] and cfg.train.batch_size == 8  # the run's config is not changed
    off = make_cfg(tmp_path, "train.batch_size=8")
    assert [phase_batch_size(off, p) for p in vicc_phases(off)] == [8] * 6
    paper = C.load(C.CONFIG_DIR / "ucf101_s3d.yaml")
    assert [phase_batch_size(paper, p) for p in vicc_phases(paper)] == [48, 48, 24, 24, 24, 24]
    lr = build_schedule(paper.optim, paper.train.batch_size * 4, 10, 100, cross=True)(0)
    assert lr == pytest.approx(0.6)
    with pytest.raises(C.ConfigError, match="method.vicc.cross_batch_size"):
        make_cfg(tmp_path, "method.vicc.cross_batch_size=1")
