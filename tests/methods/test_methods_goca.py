"""GOCA: assignments with a prior (Lemma 1), the loss (eq. 12-13), the prototype regulariser (eq. 11), variants."""

import pytest
import torch
import torch.nn.functional as F

import kernels
from tests.methods.methods_helpers import make_batch, small_config, state_at
from vicc_fast.config import Config, GocaVariant, MethodName, Stream
from vicc_fast.methods import build_method
from vicc_fast.methods.goca import (
    GOCA,
    goca_phases,
    mean_largest_cosine,
    prototype_reg_loss,
    regularise_prototypes_,
)


def goca_config(variant=GocaVariant.goca, **goca) -> Config:
    cfg = small_config(name=MethodName.goca)
    cfg.method.goca.variant = variant
    cfg.method.goca.proto_reg_init_steps = 20
    for k, v in goca.items():
        setattr(cfg.method.goca, k, v)
    return cfg


def lemma1_sinkhorn(C, prior, lam1, lam2, iters):
    """GOCA eq. 8-10 literally: D = diag(u) K diag(v), K = exp((-C + lam2 log D') / (lam1 + lam2)), with u, v
    from Sinkhorn's alternating scaling to D 1_N = 1/M, D^T 1_M = 1/N (prototype sums first, as SwAV); rows of
    the result rescaled to sum to 1. C, prior: [M, N] -> [M, N] (float64)."""
    Kmat = torch.exp((-C.double() + lam2 * torch.log(prior.double())) / (lam1 + lam2))
    M, N = Kmat.shape
    D = Kmat / Kmat.sum()
    for _ in range(iters):
        D = D / D.sum(dim=0, keepdim=True) / N  # every prototype gets 1/N of the mass
        D = D / D.sum(dim=1, keepdim=True) / M  # every sample 1/M
    return D * M


def test_prior_sinkhorn_reduces_to_plain_when_lambda2_is_zero():
    g = torch.Generator().manual_seed(0)
    scores = (
        F.normalize(torch.randn(10, 8, generator=g), dim=1)
        @ F.normalize(torch.randn(6, 8, generator=g), dim=1).t()
    )
    prior = torch.softmax(torch.randn(10, 6, generator=g), dim=1)
    q = kernels.sinkhorn_prior(scores, prior, 0.02, 0.0, 3, 10, backend="torch")
    torch.testing.assert_close(q, kernels.sinkhorn(scores, 0.02, 3, 10, backend="torch"))


def test_prior_sinkhorn_equals_lemma1():
    g = torch.Generator().manual_seed(1)
    scores = (
        F.normalize(torch.randn(10, 8, generator=g), dim=1)
        @ F.normalize(torch.randn(6, 8, generator=g), dim=1).t()
    )
    prior = torch.softmax(torch.randn(10, 6, generator=g) * 3, dim=1)
    q = kernels.sinkhorn_prior(scores, prior, 0.02, 0.03, 3, 10, backend="torch")
    torch.testing.assert_close(
        q.double(), lemma1_sinkhorn(-scores, prior, 0.02, 0.03, 3), rtol=1e-4, atol=1e-6
    )


def swapped_terms(z_t, z_s, d_t, d_s, W, tau):
    """GOCA eq. 13 for one stream, batch-averaged: l(d^t, g^s) + l(d^s, g^t), g = softmax(f^T p / tau)."""
    g_s = F.softmax(z_s.double() @ W.double().t() / tau, dim=1)
    g_t = F.softmax(z_t.double() @ W.double().t() / tau, dim=1)
    return (-(d_t * torch.log(g_s)).sum(1) - (d_s * torch.log(g_t)).sum(1)).mean()


def test_goca_loss_equals_eq12_with_lemma1_assignments():
    torch.manual_seed(0)
    cfg = goca_config()
    m = build_method(cfg)
    assert isinstance(m, GOCA)
    phase = m.phases()[0]
    m.train()
    m.setup_phase(phase)
    batch = make_batch(B=5)
    out = m.loss(batch, state_at(phase, 0))
    z = m.embed(batch).detach()  # rgb_0, rgb_1, flow_0, flow_1
    W = m.protos["shared"].weight
    lam1, lam2, it, tau = 0.02, 0.03, 3, 0.1
    C = [-(z[v].double() @ W.double().t()) for v in range(4)]
    d0 = [lemma1_sinkhorn(C[v], torch.ones_like(C[v]), lam1, 0.0, it) for v in range(4)]  # D' (eq. 5)
    prior = [d0[2], d0[3], d0[0], d0[1]]  # RGB guided by flow's D' of the same clip, and vice versa
    D = [lemma1_sinkhorn(C[v], prior[v], lam1, lam2, it) for v in range(4)]  # eq. 6-8
    L_rgb = swapped_terms(z[0], z[1], D[0], D[1], W, tau)
    L_flow = swapped_terms(z[2], z[3], D[2], D[3], W, tau)
    L_final = L_rgb + L_flow  # eq. 12
    torch.testing.assert_close(out["loss"].double(), L_final / 4, rtol=1e-4, atol=1e-5)


def test_regulariser_equals_eq11_and_lowers_the_max_similarity():
    g = torch.Generator().manual_seed(0)
    W = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    S = W @ W.t()
    ref = torch.stack([torch.cat([S[i, :i], S[i, i + 1 :]]).max() for i in range(20)]).mean()
    torch.testing.assert_close(prototype_reg_loss(W), ref)
    before = (S - 2 * torch.eye(20)).max()
    W2 = W.clone()
    regularise_prototypes_(W2, 200, 0.1)
    after = (W2 @ W2.t() - 2 * torch.eye(20)).max()
    assert after < before - 0.05
    assert prototype_reg_loss(W2) < prototype_reg_loss(W)
    torch.testing.assert_close(W2.norm(dim=1), torch.ones(20))
    # the hand-written gradient is autograd's
    Wg = W.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(prototype_reg_loss(Wg), [Wg])
    W3 = W.clone()
    regularise_prototypes_(W3, 1, 0.1)
    torch.testing.assert_close(W3, F.normalize(W - 0.1 * g_auto, dim=1))


def test_annealed_regulariser_spreads_prototypes_maximally_far_apart():
    """GOCA 3.3: 'a regularization term that encourages prototypes to be maximally far apart', 'once before the
    main training phase'. At N=300, D=128 (ViCC's K, the head's width) the default initialisation (1000
    annealed per-prototype steps) leaves a mean largest cosine below 0.045, where eq. 11's mean gradient
    (before issue 25: proto_reg_init_anneal=false) leaves about 0.12 after the same 1000 steps (0.044 after
    20,000). Every prototype then has the same nearest-neighbour cosine (the space divided equally). Where the
    optimum is known (N <= D + 1: the regular simplex, cosine -1/(N-1)) it is reached."""
    g = torch.Generator().manual_seed(0)
    W = F.normalize(torch.randn(300, 128, generator=g), dim=1)
    before, after = W.clone(), W.clone()
    regularise_prototypes_(before, 1000, 0.1)  # the pre-issue-25 initialisation
    regularise_prototypes_(after, 1000, 0.1, anneal=True)  # the default
    mb, ma = mean_largest_cosine(before), mean_largest_cosine(after)
    assert mean_largest_cosine(W) > 0.2  # random: 0.26
    assert mb > 0.1  # partly spread
    assert ma < 0.045 and ma < mb / 2.5
    nearest = (after @ after.t() - 2 * torch.eye(300)).max(dim=1).values
    assert float(nearest.max() - nearest.min()) < 1e-3  # equal spacing, not a few outliers
    torch.testing.assert_close(after.norm(dim=1), torch.ones(300))
    S = F.normalize(torch.randn(32, 32, generator=g), dim=1)
    regularise_prototypes_(S, 1000, 0.1, anneal=True)
    G = S @ S.t()
    off = G[~torch.eye(32, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / 31), atol=2e-3, rtol=0)


def test_default_initialisation_is_the_annealed_one():
    """setup_phase runs the configured initialisation: the default (annealed) lands where the function does,
    proto_reg_init_anneal=false where the mean-gradient steps do."""
    for anneal in (True, False):
        torch.manual_seed(0)
        cfg = goca_config(proto_reg_init_steps=50, proto_reg_init_anneal=anneal)
        m = build_method(cfg)
        w = m.protos["shared"].weight.detach().clone()
        m.setup_phase(m.phases()[0])
        regularise_prototypes_(w, 50, 0.1, anneal=anneal)
        torch.testing.assert_close(m.protos["shared"].weight, w)
    assert Config().method.goca.proto_reg_init_anneal


def test_prototypes_placed_by_regulariser_not_by_the_loss():
    """GOCA 3.3-3.4: the regulariser runs once before training, then the prototypes stay fixed (default)."""
    assert Config().method.goca.proto_reg_steps == 0
    torch.manual_seed(0)
    cfg = goca_config()
    m = build_method(cfg)
    phase = m.phases()[0]
    w_init = m.protos["shared"].weight.detach().clone()
    m.train()
    m.setup_phase(phase)  # the one-off initialisation moved them apart
    w0 = m.protos["shared"].weight.detach().clone()
    assert prototype_reg_loss(w0) < prototype_reg_loss(w_init)
    assert not any(p is m.protos["shared"].weight for p in m.trainable_parameters(phase))
    opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.5)
    out = m.loss(make_batch(), state_at(phase, 0))
    out["loss"].backward()
    opt.step()
    m.after_step(state_at(phase, 0))
    assert torch.equal(m.protos["shared"].weight, w0)  # proto_reg_steps=0: untouched by training
    assert all(p.grad is not None for p in m.backbones["rgb"].parameters())
    assert all(p.grad is not None for p in m.backbones["flow"].parameters())  # joint, end to end
    m.setup_phase(phase)  # a resumed phase: no second initialisation
    assert torch.equal(m.protos["shared"].weight, w0)
    m.cfg.method.goca.proto_reg_steps = 2  # the switch: re-spread after every optimiser step
    m.after_step(state_at(phase, 0))
    assert not torch.equal(m.protos["shared"].weight, w0)


def test_variants():
    torch.manual_seed(0)
    batch = make_batch(B=4)
    qs = {}
    for v in GocaVariant:
        m = build_method(goca_config(v))
        phase = m.phases()[0]
        m.train()
        m.setup_phase(phase)
        out = m.loss(batch, state_at(phase, 0))
        assert torch.isfinite(out["loss"])
        z = m.embed(batch).detach()
        assert z.shape[0] == (2 if v is GocaVariant.avg else 4)
        qs[v] = (m, z, m.assignments(z, None))
    assert set(qs[GocaVariant.sview][0].protos) == {"rgb", "flow"}  # independent heads and prototypes
    assert set(qs[GocaVariant.sep][0].protos) == {"shared"}
    m, z, q = qs[GocaVariant.sep]  # sep: plain Sinkhorn, no prior
    plain = kernels.sinkhorn(z @ m.protos["shared"].weight.t(), 0.02, 3, 4, backend="torch")
    torch.testing.assert_close(q, plain)
    m, z, q = qs[GocaVariant.goca]  # goca: the prior changes the assignment
    plain = kernels.sinkhorn(z @ m.protos["shared"].weight.t(), 0.02, 3, 4, backend="torch")
    assert not torch.allclose(q, plain, atol=1e-3)


def test_schedule_and_queue():
    cfg = Config()
    (phase,) = goca_phases(cfg)
    assert phase.epochs == 500 and phase.streams == (Stream.rgb, Stream.flow) and phase.frozen_stream is None
    torch.manual_seed(0)
    m = build_method(goca_config())
    phase = m.phases()[0]
    m.setup_phase(phase)
    with torch.no_grad():
        m.loss(make_batch(), state_at(phase, phase.queue_start_epoch - 1))
        assert m.queue.filled == 0
        ons = [m.loss(make_batch(), state_at(phase, phase.queue_start_epoch))["queue_on"].item()]
        assert m.queue.filled == 4
        ons += [
            m.loss(make_batch(), state_at(phase, phase.queue_start_epoch))["queue_on"].item() for _ in "abc"
        ]
    assert ons == [0.0, 0.0, 0.0, 1.0]  # the queue (12 rows, 4 per step) joins once full, as in SwAV


@pytest.mark.parametrize("variant", list(GocaVariant))
def test_bf16_autocast(variant):
    torch.manual_seed(0)
    m = build_method(goca_config(variant))
    phase = m.phases()[0]
    m.setup_phase(phase)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(make_batch(), state_at(phase, 0))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_bad_settings_are_clear_errors():
    from vicc_fast.config import ConfigError, load

    with pytest.raises(ConfigError, match="method.goca.lambda1"):
        load(None, ["method.goca.lambda1=0.0"])
    with pytest.raises(ConfigError, match="method.goca.proto_reg_init_lr"):
        load(None, ["method.goca.proto_reg_init_lr=0.0"])


def test_prototype_scorer_per_variant():
    """Evaluation's prototype assignments: head then prototypes of the stream's part; none for ``avg``."""
    torch.manual_seed(0)
    x = torch.randn(5, GOCA(goca_config()).backbones["rgb"].feature_dim)
    for variant in (GocaVariant.goca, GocaVariant.sview, GocaVariant.sep):
        m = GOCA(goca_config(variant)).eval()
        for s in (Stream.rgb, Stream.flow):
            part = "shared" if variant is not GocaVariant.sview else s.value
            want = m.protos[part](m.heads[part](x))
            got = m.prototype_scorer(s)(x)
            assert got.shape == (5, m.cfg.model.num_prototypes) and torch.equal(got, want)
    assert GOCA(goca_config(GocaVariant.avg)).prototype_scorer(Stream.rgb) is None
    coclr = build_method(small_config(name=MethodName.coclr))
    assert coclr.prototype_scorer(Stream.rgb) is None


def test_paper_config_trains_gocas_recipe():
    """configs/ucf101_goca_s3d.yaml runs the GOCA paper's schedule (section 4): one joint phase of 500 epochs,
    no queue, SGD+LARS at lr 4.8 'increased during the first 10 warm-up epochs and then ... decreased to 0.0048
    with cosine learning rate decay', for 64 GPUs x 10 clips (and the same lr / batch on 4 GPUs). The lr is
    sampled over the phase's steps as the trainer builds it; the method is built from the file."""
    import math

    from vicc_fast import config as C
    from vicc_fast.engine.optim import build_optimizer, build_schedule

    cfg = C.load(C.CONFIG_DIR / "ucf101_goca_s3d.yaml")
    (phase,) = goca_phases(cfg)
    assert (phase.name, phase.epochs, phase.streams) == ("joint", 500, (Stream.rgb, Stream.flow))
    assert phase.queue_start_epoch == phase.epochs  # no queue ever joins
    spe = 15  # UCF101 split 1: 9537 videos / 640 clips per step
    global_batch = cfg.train.batch_size * 64
    lr = build_schedule(cfg.optim, global_batch, spe, phase.lr_epochs or phase.epochs, cross=phase.cross)
    warm = 10 * spe
    assert lr(0) == pytest.approx(4.8 / warm)  # rises linearly from ~0 ...
    assert [lr(t) for t in range(warm)] == sorted(lr(t) for t in range(warm))
    assert lr(warm - 1) == pytest.approx(4.8) and lr(warm) == pytest.approx(4.8)  # ... to 4.8 at epoch 10
    mid = warm + (500 * spe - warm - 1) // 2
    assert lr(mid) == pytest.approx((4.8 + 0.0048) / 2, rel=1e-3)  # half-way down the cosine
    assert lr(500 * spe - 1) == pytest.approx(0.0048)  # ends at 0.0048
    after = [lr(t) for t in range(warm, 500 * spe)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    t = warm + (500 * spe - warm - 1) // 4
    want = 0.0048 + 0.5 * (4.8 - 0.0048) * (1 + math.cos(math.pi * (t - warm) / (500 * spe - warm - 1)))
    assert lr(t) == pytest.approx(want)
    four = build_schedule(cfg.optim, cfg.train.batch_size * 4, 238, 500)  # 4 GPUs x 10: lr / batch kept
    assert four(10 * 238) == pytest.approx(4.8 * 40 / 640)
    assert isinstance(build_optimizer(cfg.optim, [torch.nn.Parameter(torch.ones(2))]), torch.optim.Optimizer)
    # the method the file builds: shared head and prototypes, lambda1 0.02 / lambda2 0.03, no queue
    g = cfg.method.goca
    assert (g.variant, g.lambda1, g.lambda2, g.proto_reg_steps) == (GocaVariant.goca, 0.02, 0.03, 0)
    assert g.proto_reg_init_anneal and cfg.method.swav.queue_size == 0
    assert (
        C.ClusterProtocol(cfg.eval.cluster.protocol) is C.ClusterProtocol.majority
        and cfg.eval.cluster.runs == 50
    )
    cfg.model.backbone = C.Backbone.tiny  # the S3D trunk is tested elsewhere; the rest as the file says
    cfg.method.goca.proto_reg_init_steps = 0
    m = build_method(cfg)
    assert isinstance(m, GOCA) and set(m.protos) == {"shared"} and m.queue.length == 0
    assert m.protos["shared"].weight.shape == (1000, 128)
