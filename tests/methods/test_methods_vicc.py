"""ViCC: the loss against the paper's pseudocode, the schedule, freezing, the queue, the frozen stream."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tests.methods.methods_helpers import make_batch, small_config, state_at
from vicc_fast.config import Config, MethodName, Stream, load
from vicc_fast.methods import build_method
from vicc_fast.methods.base import PhaseSpec
from vicc_fast.methods.vicc import ViCC, vicc_phases


# ------------------------------------------------------------------ direct transcriptions of the papers
def swav_sinkhorn(out: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV main_swav.py distributed_sinkhorn on one process, literally (float64). out: [N, K] -> [N, K]."""
    Q = torch.exp(out.double() / eps).t()
    Q /= Q.sum()
    K, B = Q.shape
    for _ in range(iters):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def assign(sim: torch.Tensor, queue_sim: torch.Tensor | None, eps: float, iters: int) -> torch.Tensor:
    """Sinkhorn over [batch; queue] rows, keeping the batch rows."""
    n = sim.shape[0]
    out = sim if queue_sim is None else torch.cat([sim, queue_sim])
    return swav_sinkhorn(out.detach(), eps, iters)[:n]


def pseudocode_cross_loss(z_s, z_t, C, temp, eps, iters, queue=None):
    """The supplementary's 'Pseudocode for ViCC-RGB-2', line by line (s = the trained stream, t = frozen).
    z_s, z_t: [2B, D] (view i then view j); C: [K, D]; queue: None or [4, L, D] per view (s_i, s_j, t_i, t_j)."""
    B = z_s.shape[0] // 2
    sim_s = z_s.double() @ C.double().t()
    sim_t = z_t.double() @ C.double().t()
    sim_s_i, sim_s_j = sim_s[:B], sim_s[B:]
    sim_t_i, sim_t_j = sim_t[:B], sim_t[B:]
    qs = [None] * 4 if queue is None else [queue[v].double() @ C.double().t() for v in range(4)]
    with torch.no_grad():
        q_s_i = assign(sim_s_i, qs[0], eps, iters)
        q_s_j = assign(sim_s_j, qs[1], eps, iters)
        q_t_i = assign(sim_t_i, qs[2], eps, iters)
        q_t_j = assign(sim_t_j, qs[3], eps, iters)
    p_s_i, p_s_j = F.softmax(sim_s_i / temp, dim=1), F.softmax(sim_s_j / temp, dim=1)
    p_t_i, p_t_j = F.softmax(sim_t_i / temp, dim=1), F.softmax(sim_t_j / temp, dim=1)

    def dot(q, p):
        return torch.sum(q * torch.log(p), dim=1)

    l_s_i = dot(q_s_i, p_s_j) + dot(q_s_i, p_t_i) + dot(q_s_i, p_t_j)
    l_s_j = dot(q_s_j, p_s_i) + dot(q_s_j, p_t_i) + dot(q_s_j, p_t_j)
    l_t_i = dot(q_t_i, p_s_i) + dot(q_t_i, p_s_j) + dot(q_t_i, p_t_j)
    l_t_j = dot(q_t_j, p_s_i) + dot(q_t_j, p_s_j) + dot(q_t_j, p_t_i)
    loss = -1 / 4 * (1 / 3 * l_s_i + 1 / 3 * l_s_j + 1 / 3 * l_t_i + 1 / 3 * l_t_j)
    return loss.mean()


def swav_loss(z, C, temp, eps, iters):
    """SwAV's loss with two crops (crops_for_assign = [0, 1]): mean over the two swapped terms."""
    B = z.shape[0] // 2
    out = z.double() @ C.double().t()
    loss = 0
    for crop in (0, 1):
        q = assign(out[crop * B : (crop + 1) * B], None, eps, iters)
        other = 1 - crop
        p = F.softmax(out[other * B : (other + 1) * B] / temp, dim=1)
        loss = loss - torch.mean(torch.sum(q * torch.log(p), dim=1))
    return loss / 2


# ------------------------------------------------------------------------------------------ helpers
def method_and_phases(cfg: Config) -> tuple[ViCC, dict[str, PhaseSpec]]:
    m = build_method(cfg)
    assert isinstance(m, ViCC)
    return m, {p.name: p for p in m.phases()}


def embeddings(m: ViCC, batch, phase):
    s, t = phase.train_stream, phase.frozen_stream
    if m.cfg.train.bn_per_view:  # each view its own BN batch (the default, as released)
        z_s = torch.cat([m.nets[s.value].embed(v) for v in batch.views[s]])
    else:
        z_s = m.nets[s.value].embed(torch.cat(batch.views[s]))
    z_t = None
    if t is not None:
        with torch.no_grad():
            z_t = m.nets[t.value].embed(torch.cat(batch.views[t]))
    return z_s, z_t


# -------------------------------------------------------------------------------------------- tests
def test_registry_builds_vicc_with_both_encoders(cfg):
    cfg.method.name = MethodName.vicc
    m = build_method(cfg)
    assert isinstance(m, ViCC)
    enc = m.encoders()
    assert set(enc) == {Stream.rgb, Stream.flow}
    assert enc[Stream.rgb] is not enc[Stream.flow]
    assert enc[Stream.rgb](make_batch().views[Stream.rgb][0]).shape == (4, 8)


def test_paper_schedule():
    cfg = Config()  # schema defaults are the paper's numbers
    got = [
        (
            p.name,
            p.train_stream,
            p.frozen_stream,
            p.streams,
            p.num_views,
            p.epochs,
            p.queue_start_epoch,
            p.freeze_prototypes_epochs,
            p.report,
        )
        for p in vicc_phases(cfg)
    ]
    R, Fl = Stream.rgb, Stream.flow
    assert got == [
        ("rgb1", R, None, (R,), 2, 300, 150, 100, "RGB-1"),
        ("flow1", Fl, None, (Fl,), 2, 300, 200, 100, "Flow-1"),
        ("cross_rgb_c1", R, Fl, (R, Fl), 2, 100, 25, 0, ""),
        ("cross_flow_c1", Fl, R, (Fl, R), 2, 100, 25, 0, ""),
        ("cross_rgb_c2", R, Fl, (R, Fl), 2, 100, 25, 0, "RGB-2"),
        ("cross_flow_c2", Fl, R, (Fl, R), 2, 100, 25, 0, "Flow-2"),
    ]


@pytest.mark.parametrize("name", ["ucf101_s3d.yaml", "ucf101_r21d.yaml", "ucf101_r3d.yaml"])
def test_paper_config_files_give_the_paper_schedule(name):
    from vicc_fast.config import CONFIG_DIR

    path = CONFIG_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not written yet")
    cfg = load(path)
    m, phases = method_and_phases(replace_model_small(cfg))
    assert [p.name for p in m.phases()] == [
        "rgb1",
        "flow1",
        "cross_rgb_c1",
        "cross_flow_c1",
        "cross_rgb_c2",
        "cross_flow_c2",
    ]
    assert [(p.epochs, p.queue_start_epoch, p.freeze_prototypes_epochs) for p in m.phases()] == [
        (300, 150, 100),
        (300, 200, 100),
        (100, 25, 0),
        (100, 25, 0),
        (100, 25, 0),
        (100, 25, 0),
    ]
    assert [p.report for p in m.phases()] == ["RGB-1", "Flow-1", "", "", "RGB-2", "Flow-2"]


def replace_model_small(cfg: Config) -> Config:
    small = small_config()
    cfg.model = small.model
    return cfg


def test_cross_freeze_and_no_queue_switches():
    cfg = small_config(queue_size=0)
    cfg.method.vicc.cross_freeze_prototypes = True
    cfg.schedule.cross_epochs = 7
    phases = build_method(cfg).phases()
    cross = [p for p in phases if p.frozen_stream is not None]
    assert all(p.freeze_prototypes_epochs == 7 for p in cross)
    assert all(p.queue_start_epoch == p.epochs for p in phases)  # never on
    assert not any(p.queue_active(p.epochs - 1) for p in phases)


@pytest.mark.parametrize("name", ["cross_rgb_c1", "cross_flow_c1"])
@pytest.mark.parametrize("with_queue", [False, True])
def test_cross_loss_equals_pseudocode(cfg, name, with_queue):
    m, phases = method_and_phases(cfg)
    phase = phases[name]
    m.setup_phase(phase)
    m.train()
    batch = make_batch(B=4)
    queue = None
    if with_queue:
        queue = F.normalize(torch.randn(4, 12, 8), dim=-1)
        m.queue.queue.copy_(queue)
        m.queue.filled = 12
    state = state_at(phase, epoch=phase.queue_start_epoch if with_queue else 0)
    assert phase.queue_active(state.epoch) == with_queue
    out = m.loss(batch, state)
    (g_method,) = torch.autograd.grad(out["loss"], [m.protos[phase.train_stream.value].weight])

    C = m.protos[phase.train_stream.value].weight
    z_s, z_t = embeddings(m, batch, phase)
    ref = pseudocode_cross_loss(
        z_s,
        z_t,
        C,
        cfg.method.swav.temperature,
        cfg.method.swav.epsilon,
        cfg.method.swav.sinkhorn_iters,
        queue,
    )
    (g_ref,) = torch.autograd.grad(ref, [C])
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"].double(), ref, rtol=1e-5, atol=1e-5)
    # the frozen stream's scores against C_s feed the prototype gradient too (pseudocode: sim_flow = z_flow C_rgb)
    torch.testing.assert_close(g_method, g_ref, rtol=1e-4, atol=1e-6)
    # the per-target terms average to the total
    terms = torch.stack([v for k, v in out.items() if k.startswith("term/")])
    assert terms.numel() == 4
    torch.testing.assert_close(terms.mean(), out["loss"].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["rgb1", "flow1"])
def test_single_stream_loss_equals_swav_two_terms(cfg, name):
    m, phases = method_and_phases(cfg)
    phase = phases[name]
    m.setup_phase(phase)
    batch = make_batch(B=4, streams=(phase.train_stream,))
    out = m.loss(batch, state_at(phase, 0))
    z, _ = embeddings(m, batch, phase)
    ref = swav_loss(z, m.protos[phase.train_stream.value].weight, 0.1, 0.05, 3)
    torch.testing.assert_close(out["loss"].double(), ref, rtol=1e-5, atol=1e-5)


def _sgd_step(m: ViCC, phase, state, batch, opt):
    opt.zero_grad(set_to_none=True)
    out = m.loss(batch, state)
    out["loss"].backward()
    m.after_backward(state)
    opt.step()
    m.after_step(state)
    return out


def test_prototypes_frozen_then_trained_and_renormalised(cfg):
    cfg.method.vicc.single_freeze_prototypes = 1
    m, phases = method_and_phases(cfg)
    phase = phases["rgb1"]
    m.setup_phase(phase)
    m.train()
    opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.5, momentum=0.9, weight_decay=1e-4)
    batch = make_batch(streams=(Stream.rgb,))
    protos = m.protos["rgb"].weight
    p0 = protos.detach().clone()
    w0 = m.nets["rgb"].backbone.features[0][0].weight.detach().clone()
    for step in range(2):
        _sgd_step(m, phase, state_at(phase, 0, step), batch, opt)
    assert torch.equal(protos, p0)  # frozen during epoch 0
    assert not torch.equal(m.nets["rgb"].backbone.features[0][0].weight, w0)  # the encoder did train
    _sgd_step(m, phase, state_at(phase, 1, 0), batch, opt)
    assert not torch.equal(protos, p0)  # trained from epoch 1
    torch.testing.assert_close(protos.norm(dim=1), torch.ones(6))


def test_cross_freeze_prototypes_keeps_them_fixed_all_phase():
    cfg = small_config()
    cfg.method.vicc.cross_freeze_prototypes = True
    cfg.schedule.cross_epochs = 3
    m, phases = method_and_phases(cfg)
    phase = phases["cross_rgb_c1"]
    m.setup_phase(phase)
    opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.5)
    p0 = m.protos["rgb"].weight.detach().clone()
    for epoch in range(3):
        _sgd_step(m, phase, state_at(phase, epoch), make_batch(seed=epoch), opt)
    assert torch.equal(m.protos["rgb"].weight, p0)


@pytest.mark.parametrize("name", ["cross_rgb_c1", "cross_flow_c1"])
def test_frozen_stream_never_changes(cfg, name):
    m, phases = method_and_phases(cfg)
    phase = phases[name]
    t = phase.frozen_stream.value
    m.setup_phase(phase)
    m.train()  # the engine may call train(); the frozen stream must stay in eval mode
    assert not m.nets[t].training and m.nets[phase.train_stream.value].training
    frozen_before = {k: v.clone() for k, v in m.nets[t].state_dict().items()}
    protos_before = m.protos[t].weight.detach().clone()
    trainable = m.trainable_parameters(phase)
    assert not any(p is q for p in trainable for q in m.nets[t].parameters())
    # even an optimiser over *all* parameters must not move it (no grad reaches it)
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
    for step in range(3):
        _sgd_step(m, phase, state_at(phase, 0, step), make_batch(seed=step), opt)
    for k, v in m.nets[t].state_dict().items():
        assert torch.equal(v, frozen_before[k]), k  # weights and BN running statistics
    assert torch.equal(m.protos[t].weight, protos_before)
    assert all(p.grad is None for p in m.nets[t].parameters())


@pytest.mark.parametrize("quirk", [True, False])
def test_frozen_stream_runs_in_train_mode_from_step_5_of_each_alternations_first_epoch(cfg, quirk):
    """Released main_cross.py: every epoch starts with model.train(); second.eval() (l. 614-616), but at
    args.iteration == 5 (1-based, reset by each alternation's fresh launch) the visualisation calls model.eval()
    then model.train() (l. 635-651), so from the 5th step to the end of the first epoch the frozen network's
    BatchNorm normalises each view (second(f2), second(f1): one BN batch each) with batch statistics and its
    running statistics move. method.vicc.frozen_train_quirk=false: eval mode throughout, statistics untouched."""
    cfg.method.vicc.frozen_train_quirk = quirk
    m, phases = method_and_phases(cfg)
    seen: list[tuple[bool, int]] = []  # (train mode, rows) of each call of the frozen net's first BN
    for name in ("cross_rgb_c1", "cross_flow_c1"):
        phase = phases[name]
        t = phase.frozen_stream.value
        m.setup_phase(phase)
        m.train()
        m.zero_grad(set_to_none=True)  # the previous alternation trained this stream
        bn = next(x for x in m.nets[t].backbone.modules() if isinstance(x, torch.nn.BatchNorm3d))
        h = bn.register_forward_pre_hook(lambda mod, a: seen.append((mod.training, a[0].shape[0])))
        opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.1)
        for epoch, step in [(0, 0), (0, 3), (0, 4), (0, 9), (1, 0), (1, 5)]:
            seen.clear()
            before = bn.running_mean.clone()
            _sgd_step(m, phase, state_at(phase, epoch, step), make_batch(B=4, seed=step), opt)
            on = quirk and epoch == 0 and step >= 4
            assert {mode for mode, _ in seen} == {on}, (name, epoch, step)
            assert [rows for _, rows in seen] == ([4, 4] if on else [8])  # per view, or one eval forward
            assert torch.equal(bn.running_mean, before) is not on
            assert not m.nets[t].training  # eval mode again after the step
        h.remove()
        assert all(p.grad is None for p in m.nets[t].parameters())
    # released args.iteration counts steps across epochs: with 3 steps per epoch the 5th step is epoch 1's 2nd,
    # and train mode lasts to the end of epoch 1
    got = [
        m.frozen_in_train_mode(state_at(phase, e, s, steps_per_epoch=3)) for e in (0, 1, 2) for s in range(3)
    ]
    assert got == [False] * 4 + [quirk] * 2 + [False] * 3


@pytest.mark.parametrize("when_full", [True, False])
def test_queue_starts_at_configured_epoch_and_is_used(cfg, when_full):
    """The queue fills from its start epoch; its rows join the assignment once it is full (default: SwAV and
    the released ViCC code) or from the step after its first rows (``method.swav.queue_when_full=false``)."""
    cfg.method.swav.queue_when_full = when_full
    # the frozen stream in eval mode throughout: the released train-mode stretch (its own test) would move its
    # BatchNorm statistics between the with- and without-queue losses compared below
    cfg.method.vicc.frozen_train_quirk = False
    m, phases = method_and_phases(cfg)
    phase = replace(phases["cross_rgb_c1"], queue_start_epoch=2)
    m.setup_phase(phase)
    opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.1)
    batch = make_batch(B=4)
    for epoch in range(2):
        out = _sgd_step(m, phase, state_at(phase, epoch), batch, opt)
        assert m.queue.filled == 0 and out["queue_on"].item() == 0.0
    out = _sgd_step(m, phase, state_at(phase, 2, 0), batch, opt)
    assert m.queue.filled == 4 and out["queue_on"].item() == 0.0  # the queue filled from epoch 2 ...
    # ... holding all four views' embeddings (s_i, s_j, t_i, t_j)
    assert m.queue.queue[:, :4].abs().sum(-1).gt(0).all()

    def with_and_without_queue(step: int) -> tuple[dict, torch.Tensor]:
        s1 = state_at(phase, 2, step)
        with torch.no_grad():
            filled, ptr = m.queue.filled, m.queue.ptr
            without_q = m.loss(batch, replace(s1, epoch=0))["loss"]  # queue off: untouched
            out = m.loss(batch, s1)
        assert (m.queue.filled, m.queue.ptr) == (min(12, filled + 4), (ptr + 4) % 12)
        return out, without_q

    # length 12, 4 rows per step: full after the third step of epoch 2, so it joins at the fourth
    joined = []
    for step in (1, 2, 3):
        out, without_q = with_and_without_queue(step)
        on = out["queue_on"].item() == 1.0
        assert on == (not torch.allclose(out["loss"], without_q))  # queue_on says whether rows joined
        joined.append(on)
    assert joined == ([False, False, True] if when_full else [True, True, True])
    for _ in range(5):
        m.loss(batch, state_at(phase, 2, 4))
    assert m.queue.filled == 12  # capped at the configured length


def test_queue_survives_resume_and_resets_for_a_new_phase(cfg):
    m, phases = method_and_phases(cfg)
    m.setup_phase(phases["rgb1"])
    q = F.normalize(torch.randn(4, 12, 8), dim=-1)
    m.queue.queue.copy_(q)
    m.queue.filled, m.queue.ptr = 7, 3
    sd = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in m.state_dict().items()}
    for load_first in (True, False):  # the engine may load the checkpoint before or after setup_phase
        m2, _ = method_and_phases(cfg)
        if load_first:
            m2.load_state_dict(sd)
            m2.setup_phase(phases["rgb1"])
        else:
            m2.setup_phase(phases["rgb1"])
            m2.load_state_dict(sd)
        assert (m2.queue.filled, m2.queue.ptr) == (7, 3)
        assert torch.equal(m2.queue.queue, q)
    m2.setup_phase(phases["flow1"])  # the next phase starts with an empty queue
    assert (m2.queue.filled, m2.queue.ptr) == (0, 0)
    assert m2.queue.queue.abs().sum() == 0


def test_steps_on_fixed_batch_lower_the_loss(cfg):
    m, phases = method_and_phases(cfg)
    phase = phases["cross_rgb_c1"]
    m.setup_phase(phase)
    opt = torch.optim.Adam(m.trainable_parameters(phase), lr=1e-2)
    batch = make_batch(B=8)
    state = state_at(phase, 0)
    first = _sgd_step(m, phase, state, batch, opt)["loss"].item()
    for _ in range(6):
        last = _sgd_step(m, phase, state, batch, opt)["loss"].item()
    assert last < first


def test_bf16_autocast_keeps_loss_head_fp32(cfg):
    m, phases = method_and_phases(cfg)
    phase = phases["cross_flow_c1"]
    m.setup_phase(phase)
    batch = make_batch()
    ref = m.loss(batch, state_at(phase, 0))["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(batch, state_at(phase, 0))
    assert out["loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], ref, rtol=0.05, atol=0.05)
    out["loss"].backward()
    assert m.protos["flow"].weight.grad.dtype == torch.float32


def test_usage_entropy():
    from vicc_fast.methods.vicc import usage_entropy

    K = 4
    uniform = torch.eye(K).repeat(3, 1)  # every prototype nearest for 3 rows
    torch.testing.assert_close(usage_entropy(uniform), torch.tensor(math.log(K)))
    collapsed = torch.zeros(12, K)
    collapsed[:, 2] = 1
    assert usage_entropy(collapsed).abs() < 1e-6
