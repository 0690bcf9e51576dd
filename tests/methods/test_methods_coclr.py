"""CoCLR: the multi-instance InfoNCE against the paper's pseudocode, top-K mining, UberNCE, momentum, queue."""

import pytest
import torch
import torch.nn.functional as F

from tests.methods.methods_helpers import make_batch, small_config, state_at
from vicc_fast.config import Config, MethodName, Stream, UberNceLoss
from vicc_fast.methods import build_method
from vicc_fast.methods.coclr import (
    CoCLR,
    coclr_phases,
    drop_own_key,
    label_positive_mask,
    mean_log_prob_nce,
    multi_instance_nce,
    own_key_coin,
    topk_positive_mask,
)


def coclr_config(**coclr) -> Config:
    cfg = small_config(name=MethodName.coclr)
    cfg.method.coclr.queue_size = 16
    for k, v in coclr.items():
        setattr(cfg.method.coclr, k, v)
    return cfg


def pseudocode_loss(z1_q, z1_k, z2, queue_rgb, queue_flow, topk, t):
    """Appendix B, Algorithm 1 (queues as C x K there; [K, C] rows here), literally."""
    N = z1_q.shape[0]
    l_current = torch.einsum("nc,nc->n", [z1_q, z1_k]).unsqueeze(-1)
    l_history = torch.einsum("nc,ck->nk", [z1_q, queue_rgb.t()])
    logits = torch.cat([l_current, l_history], dim=1)
    logits /= t
    flow_sim = torch.einsum("nc,ck->nk", [z2, queue_flow.t()])
    _, topkidx = torch.topk(flow_sim, topk, dim=1)
    topk_onehot = torch.zeros_like(flow_sim)
    topk_onehot.scatter_(1, topkidx, 1)
    mask = torch.cat([torch.ones(N, 1), topk_onehot], dim=1)
    loss = -torch.log((F.softmax(logits, dim=1) * mask).sum(1))
    return loss.mean()


def test_multi_instance_nce_equals_eq2_and_reduces_to_infonce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 9, generator=g) * 3
    mask = torch.rand(5, 9, generator=g) > 0.6
    mask[:, 0] = True
    ref = -torch.log((F.softmax(logits, dim=1) * mask).sum(1)).mean()
    torch.testing.assert_close(multi_instance_nce(logits, mask), ref)
    only_own = torch.zeros_like(mask)
    only_own[:, 0] = True  # eq. 1: InfoNCE with the positive in column 0
    torch.testing.assert_close(
        multi_instance_nce(logits, only_own), F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    )


def test_topk_mining_picks_the_k_most_similar():
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(6, 20, generator=g)
    mask = topk_positive_mask(sim, 5)
    assert (mask.sum(1) == 5).all()
    for b in range(6):
        assert set(torch.nonzero(mask[b]).flatten().tolist()) == set(
            sim[b].argsort(descending=True)[:5].tolist()
        )
        assert sim[b][mask[b]].min() >= sim[b][~mask[b]].max()
    valid = torch.arange(20) < 3  # a queue with 3 real rows: only those can be positives
    mask = topk_positive_mask(sim, 5, valid)
    assert mask[:, 3:].sum() == 0 and (mask[:, :3].sum(1) == 3).all()


def test_ubernce_positives_equal_the_label_mask():
    labels = torch.tensor([0, 1, 2])
    qlab = torch.tensor([1, 0, -1, 2, 1, 0])
    want = torch.tensor([[0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(label_positive_mask(labels, qlab), want)


def test_schedule_matches_the_paper():
    cfg = Config()
    got = [(p.name, p.train_stream, p.frozen_stream, p.epochs, p.report) for p in coclr_phases(cfg)]
    R, Fl = Stream.rgb, Stream.flow
    assert got == [
        ("rgb1", R, None, 300, "RGB-1"),
        ("flow1", Fl, None, 300, "Flow-1"),
        ("cross_rgb_c1", R, Fl, 100, ""),
        ("cross_flow_c1", Fl, R, 100, ""),
        ("cross_rgb_c2", R, Fl, 100, "RGB-2"),
        ("cross_flow_c2", Fl, R, 100, "Flow-2"),
    ]
    assert Config().method.coclr.temperature == 0.07 and Config().method.coclr.momentum == 0.999


@pytest.mark.parametrize("mine_key_clip", [True, False])
@pytest.mark.parametrize("name", ["cross_rgb_c1", "cross_flow_c1"])
def test_cotraining_loss_equals_pseudocode(name, mine_key_clip):
    """Appendix B with the frozen stream's feature of the key clip (view 1), mined with and queued beside the
    key: the released model/pretrain.py CoCLR.forward (kf = sampler(f2), mask_sim = kf @ queue_second,
    _dequeue_and_enqueue(k, kf, ...)); method.coclr.mine_key_clip=false takes the query clip's (view 0). The
    own-key coin is off here (drop_own_key_prob=0; the pseudocode has none)."""
    torch.manual_seed(0)
    cfg = coclr_config(topk=3, mine_key_clip=mine_key_clip, drop_own_key_prob=0.0)
    m = build_method(cfg)
    assert isinstance(m, CoCLR)
    phase = {p.name: p for p in m.phases()}[name]
    m.train()
    m.setup_phase(phase)
    s, t = phase.train_stream.value, phase.frozen_stream.value
    # a full queue of real rows (the pseudocode has no notion of empty rows)
    m.queue.queue.copy_(F.normalize(torch.randn(2, 16, 8), dim=-1))
    m.queue.filled = 16
    queue = m.queue.queue.clone()
    batch = make_batch(B=4)
    seen = []  # what the frozen stream's network is fed
    hook = m.nets[t].backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out = m.loss(batch, state_at(phase, 0))
    hook.remove()
    view = 1 if mine_key_clip else 0
    assert len(seen) == 1 and seen[0] is batch.views[phase.frozen_stream][view]
    with torch.no_grad():
        z1_k = m.key_nets[s].embed(batch.views[phase.train_stream][1])
        z2 = m.nets[t].embed(batch.views[phase.frozen_stream][view])
    z1_q = m.nets[s].embed(batch.views[phase.train_stream][0])
    ref = pseudocode_loss(z1_q, z1_k, z2, queue[0], queue[1], 3, 0.07)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    assert out["positives"].item() == 4.0  # own key + top-3
    # the batch went into the queue: keys, the other stream's features (by default of the keys' own clip) and
    # the labels, aligned
    torch.testing.assert_close(m.queue.queue[0, :4], z1_k)
    torch.testing.assert_close(m.queue.queue[1, :4], z2)
    assert torch.equal(m.queue_labels[:4], batch.label)


def test_init_phase_is_moco_infonce():
    torch.manual_seed(0)
    m = build_method(coclr_config())
    phase = m.phases()[0]
    m.train()
    m.setup_phase(phase)
    keys = m.queue.queue[0].clone()
    batch = make_batch(B=4, streams=(Stream.rgb,))
    out = m.loss(batch, state_at(phase, 0))
    with torch.no_grad():
        zk = m.key_nets["rgb"].embed(batch.views[Stream.rgb][1])
    zq = m.nets["rgb"].embed(batch.views[Stream.rgb][0])
    logits = torch.cat([(zq * zk).sum(1, keepdim=True), zq @ keys.t()], dim=1) / 0.07
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)))


def test_ubernce_method_uses_label_positives():
    torch.manual_seed(0)
    m = build_method(coclr_config(ubernce=True))
    phase = m.phases()[2]
    m.train()
    m.setup_phase(phase)
    m.queue_labels.copy_(torch.tensor([0, 1] * 8))
    batch = make_batch(B=4)  # labels 0, 1, 0, 1
    out = m.loss(batch, state_at(phase, 0))
    assert out["positives"].item() == 1 + 8  # own key + the 8 queue entries of the same class


def test_momentum_key_encoder_and_frozen_stream():
    torch.manual_seed(0)
    m = build_method(coclr_config())
    phases = m.phases()
    m.train()
    m.setup_phase(phases[0])
    for k, v in m.key_nets["rgb"].state_dict().items():  # f_k.params = f_q.params at the start
        assert torch.equal(v, m.nets["rgb"].state_dict()[k])
    phase = phases[2]  # cross_rgb_c1: flow frozen
    m.setup_phase(phase)
    flow_before = {k: v.clone() for k, v in m.nets["flow"].state_dict().items()}
    opt = torch.optim.SGD(m.trainable_parameters(phase), lr=0.5)
    key_before = [p.detach().clone() for p in m.key_nets["rgb"].parameters()]
    out = m.loss(make_batch(), state_at(phase, 0))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    m.after_step(state_at(phase, 0))
    for kb, k, q in zip(key_before, m.key_nets["rgb"].parameters(), m.nets["rgb"].parameters()):
        torch.testing.assert_close(k, 0.999 * kb + 0.001 * q)
    assert not any(p.requires_grad for p in m.key_nets.parameters())
    for k, v in m.nets["flow"].state_dict().items():
        assert torch.equal(v, flow_before[k]), k
    assert not m.nets["flow"].training


def test_bad_settings_are_clear_errors():
    from vicc_fast import config as C
    from vicc_fast.config import ConfigError

    with pytest.raises(ConfigError, match="method.coclr.queue_size"):
        C.load(None, ["method.coclr.queue_size=0"])
    with pytest.raises(ConfigError, match="method.coclr.drop_own_key_prob"):
        C.load(None, ["method.coclr.drop_own_key_prob=1.5"])

    with pytest.raises(ConfigError, match="method.coclr.ubernce_loss"):
        C.load(None, ["method.coclr.ubernce_loss='mean'"])


def test_cotraining_same_video_entries_are_positives_and_never_mined():
    """CoCLR code (mask_source): queued keys of the query's own video are positives, excluded from top-K;
    mining starts once the queue is full (queue_is_full)."""
    c = Config().method.coclr
    assert c.same_video_positive and c.mine_when_full
    torch.manual_seed(0)
    m = build_method(coclr_config(topk=2, drop_own_key_prob=0.0))
    phase = {p.name: p for p in m.phases()}["cross_rgb_c1"]
    m.train()
    m.setup_phase(phase)
    batch = make_batch(B=4)
    with torch.no_grad():
        z2 = m.nets["flow"].embed(batch.views[Stream.flow][1])  # the key clip's flow mines
    q = F.normalize(torch.randn(2, 16, 8), dim=-1)
    q[1, 5] = z2[0]  # row 5: video 0's own earlier key, the most similar flow feature for query 0
    m.queue.queue.copy_(q)
    m.queue_videos.copy_(torch.arange(16) + 100)
    m.queue_videos[5] = batch.index[0]
    m.queue.filled = 10  # not full: no mining yet, the same-video entry is already a positive
    assert m.loss(batch, state_at(phase, 0))["positives"].item() == pytest.approx((2 + 1 + 1 + 1) / 4)
    m.queue.queue.copy_(q)
    m.queue_videos.copy_(torch.arange(16) + 100)
    m.queue_videos[5] = batch.index[0]
    m.queue.filled = 16
    out = m.loss(batch, state_at(phase, 0))
    # query 0: own key + its video's entry + 2 mined others (row 5 not among them); others: own key + 2 mined
    assert out["positives"].item() == pytest.approx((4 + 3 * 3) / 4)


def test_sibling_clips_of_one_source_are_positives_as_the_coclr_code():
    """CoCLR's mask_source compares source videos (video_source.json: UCF101's v_X_gNN_c01, _c02, ... are cut
    from one long video): a queued key of a sibling clip (another index, the same source) is a positive with
    method.coclr.same_source (default); with it off only the clip's own video counts; the queue stores the
    source ids."""
    assert Config().method.coclr.same_source
    torch.manual_seed(0)
    for same_source, expected in ((True, (2 + 1 + 1 + 1) / 4), (False, 1.0)):
        m = build_method(coclr_config(topk=2, same_source=same_source, drop_own_key_prob=0.0))
        phase = {p.name: p for p in m.phases()}["cross_rgb_c1"]
        m.train()
        m.setup_phase(phase)
        batch = make_batch(B=4)
        batch.source = batch.index + 1000  # each clip's source: a group id shared with index + 1000 elsewhere
        m.queue.queue.copy_(F.normalize(torch.randn(2, 16, 8), dim=-1))
        m.queue_videos.copy_(torch.arange(16) + 100)
        m.queue_videos[5] = batch.source[0] if same_source else batch.index[0] + 1000  # a sibling's key
        m.queue.filled = 10  # not full: no mining, only the own-source entry adds a positive
        out = m.loss(batch, state_at(phase, 0))
        assert out["positives"].item() == pytest.approx(expected)
        enqueued = m.queue_videos[(m.queue.ptr - 4 + torch.arange(4)) % 16]
        assert enqueued.tolist() == (batch.source if same_source else batch.index).tolist()


def test_source_groups_are_ucf101s_clip_groups():
    """manifest.source_group: UCF101 v_<Class>_g<NN>_c<MM> -> v_<Class>_g<NN> (any folder, extension);
    HMDB51 / Kinetics / synthetic names are their own source; load_sample_meta numbers them per split."""
    from vicc_fast.data.manifest import source_group

    assert source_group("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01") == "v_ApplyEyeMakeup_g08"
    assert source_group("v_ApplyEyeMakeup_g08_c04.avi") == "v_ApplyEyeMakeup_g08"
    assert source_group("YoYo/v_YoYo_g25_c05") != source_group("YoYo/v_YoYo_g24_c05")
    for own in (
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0",
        "abseiling/0347ZoDXyP0_000095_000105",
        "v3",
    ):
        assert source_group(own) == own


def test_coclr_schema_defaults_are_the_papers():
    """CoCLR appendix A.3 (UCF101) and section 4.1: m 0.999, queue 2048, tau 0.07, K = 5; the released code's
    same-video positives and mining from a full queue. A drifting default fails here."""
    c = Config().method.coclr
    assert (c.momentum, c.queue_size, c.temperature, c.topk) == (0.999, 2048, 0.07, 5)
    assert c.same_video_positive and c.same_source and c.mine_when_full and not c.ubernce


def test_paper_config_trains_coclrs_recipe():
    """configs/ucf101_coclr_s3d.yaml: the paper's hyper-parameters, phases and the released lr drops (InfoNCE
    main_nce.py --epochs 300 --schedule 250 280; each co-training alternation main_coclr.py --epochs 100
    --schedule 80), Adam 1e-3 / wd 1e-5 on every parameter, 32 clips per GPU."""
    from vicc_fast import config as C
    from vicc_fast.engine.optim import build_schedule

    cfg = C.load(C.CONFIG_DIR / "ucf101_coclr_s3d.yaml")
    assert cfg.method.name is MethodName.coclr
    assert cfg.method.coclr == Config().method.coclr  # the paper's numbers, pinned above
    assert (cfg.model.backbone, cfg.data.num_frames, cfg.data.stride, cfg.data.crop_size) == (
        C.Backbone.s3d,
        32,
        1,
        128,
    )
    assert (cfg.model.proj_hidden, cfg.model.proj_dim, cfg.train.batch_size) == (1024, 128, 32)
    o = cfg.optim
    assert (o.name, o.lr, o.weight_decay, o.exclude_bias_norm, o.scale_lr) == (
        C.Optimizer.adam,
        1e-3,
        1e-5,
        False,
        False,
    )
    assert (o.schedule, o.milestones, o.cross_milestones, o.gamma) == (
        C.LrScheduleKind.step,
        [250, 280],
        [80],
        0.1,
    )
    phases = coclr_phases(cfg)
    assert [(p.name, p.epochs) for p in phases] == [
        ("rgb1", 300),
        ("flow1", 300),
        ("cross_rgb_c1", 100),
        ("cross_flow_c1", 100),
        ("cross_rgb_c2", 100),
        ("cross_flow_c2", 100),
    ]
    spe = 10
    init = build_schedule(o, 128, spe, phases[0].epochs, cross=phases[0].cross)
    co = build_schedule(o, 128, spe, phases[2].epochs, cross=phases[2].cross)
    assert [init(t * spe) for t in (249, 250, 279, 280, 299)] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert [co(t * spe) for t in (79, 80, 99)] == pytest.approx([1e-3, 1e-4, 1e-4])


# ------------------------------------------------------------------ issue 25 item 11: the released co-training
def released_multi_nce(logits, mask):
    """CoCLR main_coclr.py multi_nce_loss, literally."""
    return (-torch.log((F.softmax(logits, dim=1) * mask).sum(1))).mean()


def cotrain_setup(**coclr):
    """cross_rgb_c1 with a full queue of random real rows (videos 100..115) and the query/key embeddings."""
    torch.manual_seed(0)
    m = build_method(coclr_config(**coclr))
    phase = {p.name: p for p in m.phases()}["cross_rgb_c1"]
    m.train()
    m.setup_phase(phase)
    m.queue.queue.copy_(F.normalize(torch.randn(2, 16, 8), dim=-1))
    m.queue.filled = 16
    m.queue_videos.copy_(torch.arange(16) + 100)
    return m, phase


def test_drop_own_key_only_in_rows_with_other_positives():
    """main_coclr.py 'mask_clone[mask_sum != 1, 0] = 0': a row whose own key is its only positive keeps it;
    every row with another positive (same source or mined) loses column 0."""
    mask = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # own key only: kept
            [1, 1, 0, 0, 0],  # + one other: dropped
            [1, 0, 1, 1, 1],  # + three others: dropped
            [1, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    got = drop_own_key(mask)
    want = mask.clone()
    want[1, 0] = want[2, 0] = False
    assert torch.equal(got, want)
    assert torch.equal(mask[:, 0], torch.ones(4, dtype=torch.bool))  # the input is left alone


def test_own_key_coin_is_heads_in_90_percent_of_steps_and_reproducible():
    """The released 'if random.random() < 0.9' (one coin per step, every rank the same: random.seed(epoch) on
    each), drawn here from (train.seed, phase, step): the same run draws the same coins (a resume too)."""
    coins = [own_key_coin(0, "cross_rgb_c1", k, 0.9) for k in range(4000)]
    assert 0.88 < sum(coins) / len(coins) < 0.92
    assert coins == [own_key_coin(0, "cross_rgb_c1", k, 0.9) for k in range(4000)]
    assert coins != [own_key_coin(1, "cross_rgb_c1", k, 0.9) for k in range(4000)]
    assert coins != [own_key_coin(0, "cross_flow_c1", k, 0.9) for k in range(4000)]
    assert not any(own_key_coin(0, "p", k, 0.0) for k in range(200))
    assert all(own_key_coin(0, "p", k, 1.0) for k in range(200))


def test_cotraining_loss_drops_own_key_on_heads_steps():
    """Default (drop_own_key_prob 0.9): on a step whose coin is heads, the row with a same-source positive (query
    0) scores only that positive, the rows without one keep their own key; the loss is the released
    multi_nce_loss of that mask. On a tails step, and with drop_own_key_prob=0, the own key stays a positive."""
    assert Config().method.coclr.drop_own_key_prob == 0.9
    seed, name = Config().train.seed, "cross_rgb_c1"
    heads = next(k for k in range(100) if own_key_coin(seed, name, k, 0.9))
    tails = next(k for k in range(100) if not own_key_coin(seed, name, k, 0.9))
    batch = make_batch(B=4)
    for prob, step, dropped in ((0.9, heads, True), (0.9, tails, False), (0.0, heads, False)):
        m, phase = cotrain_setup(topk=0, drop_own_key_prob=prob)  # no mining: only the same-source entry
        m.queue_videos[5] = batch.index[0]
        keys = m.queue.queue[0].clone()
        out = m.loss(batch, state_at(phase, 0, step, steps_per_epoch=100))
        with torch.no_grad():
            zk = m.key_nets["rgb"].embed(batch.views[Stream.rgb][1])
        zq = m.nets["rgb"].embed(batch.views[Stream.rgb][0])
        logits = torch.cat([(zq * zk).sum(1, keepdim=True), zq @ keys.t()], dim=1) / 0.07
        mask = torch.zeros(4, 17, dtype=torch.bool)
        mask[:, 0] = True
        mask[0, 1 + 5] = True
        if dropped:
            mask[0, 0] = False
        torch.testing.assert_close(
            out["loss"], released_multi_nce(logits, mask.float()), rtol=1e-5, atol=1e-6
        )
        assert out["positives"].item() == pytest.approx(mask.sum().item() / 4)


def test_ubernce_loss_is_the_mean_log_probability_of_the_positives():
    """main_nce.py: loss = -(F.log_softmax(output, 1) * target).sum(1) / target.sum(1), batch mean; switch
    method.coclr.ubernce_loss=log_sum_prob = eq. 2's log of the summed probability."""
    logits = torch.zeros(1, 4)  # four equal logits: every probability 1/4
    two = torch.tensor([[True, True, False, False]])
    assert mean_log_prob_nce(logits, two).item() == pytest.approx(-torch.log(torch.tensor(0.25)).item())
    assert multi_instance_nce(logits, two).item() == pytest.approx(-torch.log(torch.tensor(0.5)).item())
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 9, generator=g) * 3
    mask = torch.rand(5, 9, generator=g) > 0.5
    mask[:, 0] = True
    ref = (-(F.log_softmax(logits, dim=1) * mask).sum(1) / mask.sum(1)).mean()
    torch.testing.assert_close(mean_log_prob_nce(logits, mask), ref)
    one = torch.zeros_like(mask)
    one[:, 0] = True  # one positive per row: both are InfoNCE
    torch.testing.assert_close(mean_log_prob_nce(logits, one), multi_instance_nce(logits, one))

    assert Config().method.coclr.ubernce_loss is UberNceLoss.mean_log_prob
    for kind, fn in (
        (UberNceLoss.mean_log_prob, mean_log_prob_nce),
        (UberNceLoss.log_sum_prob, multi_instance_nce),
    ):
        torch.manual_seed(0)
        m = build_method(coclr_config(ubernce=True, ubernce_loss=kind))
        phase = m.phases()[0]  # rgb1: UberNCE is main_nce.py's single-stream model
        m.train()
        m.setup_phase(phase)
        m.queue_labels.copy_(torch.tensor([0, 1] * 8))
        keys = m.queue.queue[0].clone()
        batch = make_batch(B=4, streams=(Stream.rgb,))  # labels 0, 1, 0, 1
        out = m.loss(batch, state_at(phase, 0))
        with torch.no_grad():
            zk = m.key_nets["rgb"].embed(batch.views[Stream.rgb][1])
        zq = m.nets["rgb"].embed(batch.views[Stream.rgb][0])
        logits = torch.cat([(zq * zk).sum(1, keepdim=True), zq @ keys.t()], dim=1) / 0.07
        pos = torch.cat(
            [torch.ones(4, 1, dtype=torch.bool), label_positive_mask(batch.label, m.queue_labels)], 1
        )
        torch.testing.assert_close(out["loss"], fn(logits, pos), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mean_log_prob_nce(logits, pos), multi_instance_nce(logits, pos))


def test_ubernce_in_a_cross_phase_neither_drops_its_own_key_nor_waits():
    """UberNCE is main_nce.py's loop: every step steps, the own key is always a positive (the 90 % coin and
    the queue wait are main_coclr.py's)."""
    torch.manual_seed(0)
    m = build_method(coclr_config(ubernce=True, drop_own_key_prob=1.0))
    phase = m.phases()[2]
    m.train()
    m.setup_phase(phase)  # an empty queue
    m.queue_labels.copy_(torch.tensor([0, 1] * 8))
    out = m.loss(make_batch(B=4), state_at(phase, 0))
    assert out["positives"].item() == 1 + 8 and m.takes_step(state_at(phase, 0))


def test_cotraining_takes_no_step_until_the_queue_is_full():
    """main_coclr.py 'if model.module.queue_is_full: optimizer.zero_grad(); loss.backward(); optimizer.step()',
    queue_is_full read in the forward before this batch's enqueue (model/pretrain.py): with a 16-row queue and
    batch 4 the co-training steps 0-3 only fill it, step 4 is the first optimiser step. The InfoNCE phases
    (main_nce.py) step from the first batch; step_when_full=false steps from the first batch too."""
    for step_when_full, want in ((True, [False] * 4 + [True] * 3), (False, [True] * 7)):
        torch.manual_seed(0)
        m = build_method(coclr_config(step_when_full=step_when_full))
        phases = {p.name: p for p in m.phases()}
        m.train()
        m.setup_phase(phases["rgb1"])
        got = []
        for k in range(3):
            m.loss(make_batch(B=4, streams=(Stream.rgb,), seed=k), state_at(phases["rgb1"], 0, k))
            got.append(m.takes_step(state_at(phases["rgb1"], 0, k)))
        assert got == [True] * 3
        phase = phases["cross_rgb_c1"]
        m.setup_phase(phase)
        got = []
        for k in range(7):
            m.loss(make_batch(B=4, seed=k), state_at(phase, 0, k))
            got.append(m.takes_step(state_at(phase, 0, k)))
        assert got == want


def test_engine_skips_backward_and_optimiser_while_the_queue_fills(tmp_path):
    """Through the Trainer (Adam, step lr schedule): the co-training's parameters do not move while the queue
    fills (2 steps: queue 8, batch 4); the first real step is Adam's first (|update| = lr for every parameter
    with a gradient) at the lr of its own step index (the schedule advanced: 0.1 x after the epoch-1
    milestone, as the released epoch-wise schedule), the key encoder still equals the query through the wait (the momentum update runs every step, as
    the released forward's);
    the InfoNCE phase steps from its first batch. step_when_full=false moves the parameters at step 0 by the
    undecayed lr."""
    from tests.engine.tiny import loader_factory
    from vicc_fast.config import Amp, LrScheduleKind, Optimizer
    from vicc_fast.engine.trainer import Trainer

    for step_when_full in (True, False):
        cfg = coclr_config(queue_size=8, step_when_full=step_when_full)
        cfg.train.out_dir = str(tmp_path / f"run_{step_when_full}")
        cfg.train.batch_size = 4
        cfg.train.amp = Amp.off
        cfg.train.channels_last = False
        cfg.train.progress = False
        cfg.train.ckpt_every_steps = 0
        cfg.eval.after_phase = False
        cfg.schedule.steps_per_epoch = 2
        cfg.schedule.single_epochs = 1
        cfg.schedule.cross_cycles = 1
        cfg.schedule.cross_epochs = 2
        o = cfg.optim
        o.name, o.lr, o.weight_decay, o.warmup_epochs, o.scale_lr = Optimizer.adam, 1e-3, 0.0, 0, False
        o.schedule, o.milestones, o.cross_milestones, o.gamma = LrScheduleKind.step, [], [1], 0.1
        torch.manual_seed(0)
        m = build_method(cfg)
        snaps: dict[tuple[str, int], list[torch.Tensor]] = {}
        keys_equal: dict[int, bool] = {}

        def hook(phase, state, m=m, snaps=snaps, keys_equal=keys_equal):
            s = phase.train_stream.value
            snaps[(phase.name, state.global_step)] = [p.detach().clone() for p in m.nets[s].parameters()]
            if phase.name == "cross_rgb_c1":
                keys_equal[state.global_step] = all(  # up to rounding: m * k + (1 - m) * k
                    torch.allclose(k, q, rtol=1e-6, atol=1e-7)
                    for k, q in zip(m.key_nets[s].parameters(), m.nets[s].parameters())
                )

        start: dict[str, list[torch.Tensor]] = {}
        orig_setup = m.setup_phase

        def setup(phase, m=m, start=start, orig_setup=orig_setup):
            orig_setup(phase)
            start[phase.name] = [p.detach().clone() for p in m.nets[phase.train_stream.value].parameters()]

        m.setup_phase = setup
        Trainer(cfg, m, loader_factory=loader_factory(4), step_hook=hook, tensorboard=False).run()

        def moved(a, b):
            return max((x - y).abs().max().item() for x, y in zip(a, b))

        assert moved(snaps[("rgb1", 0)], start["rgb1"]) == pytest.approx(1e-3, rel=1e-3)
        c = "cross_rgb_c1"
        if step_when_full:
            assert moved(snaps[(c, 0)], start[c]) == 0.0 and moved(snaps[(c, 1)], start[c]) == 0.0
            assert keys_equal[0] and keys_equal[1]
            assert moved(snaps[(c, 2)], snaps[(c, 1)]) == pytest.approx(1e-4, rel=1e-3)
        else:
            assert moved(snaps[(c, 0)], start[c]) == pytest.approx(1e-3, rel=1e-3)


def _shuffle_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank of test_batch_shuffle_wraps_the_key_encoder_only: CoCLR's rgb1 step 0 through the Trainer with
    train.batch_shuffle; records this rank's batch and what the first conv of the query and key encoders saw."""
    import os

    import torch.distributed as dist

    from tests.engine.tiny import TinyLoader
    from vicc_fast.config import Amp
    from vicc_fast.engine.distributed import DistInfo
    from vicc_fast.engine.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = coclr_config(queue_size=16)
        cfg.train.out_dir, cfg.train.batch_size, cfg.train.amp = f"{out}/run", 4, Amp.off
        cfg.train.channels_last, cfg.train.progress, cfg.train.ckpt_every_steps = False, False, 0
        cfg.train.batch_shuffle, cfg.eval.after_phase = True, False
        cfg.schedule.phase = type(cfg.schedule.phase)("rgb1")
        cfg.schedule.steps_per_epoch, cfg.schedule.single_epochs = 1, 1
        torch.manual_seed(0)
        m = build_method(cfg)
        seen: dict[str, list[torch.Tensor]] = {"query": [], "key": []}
        for name, net in (("query", m.nets["rgb"]), ("key", m.key_nets["rgb"])):
            first = net.backbone.features[0][0]  # inside the backbone: after the shuffle's pre-hook
            first.register_forward_pre_hook(
                lambda mod, args, name=name: seen[name].append(args[0].detach().clone())
            )
        batches = []

        class Recording(TinyLoader):
            def __iter__(self):
                for b in super().__iter__():
                    batches.append(b)
                    yield b

        factory = lambda phase: Recording(phase.streams, phase.num_views, 4, rank=rank, world=world)  # noqa: E731
        Trainer(
            cfg, m, DistInfo(rank=rank, world_size=world), loader_factory=factory, tensorboard=False
        ).run()
        torch.save({"seen": seen, "views": batches[0].views[Stream.rgb]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_batch_shuffle_wraps_the_key_encoder_only(tmp_path):
    """model/pretrain.py: x2 (the key clips) is shuffled across GPUs around encoder_k (_batch_shuffle_ddp /
    _batch_unshuffle_ddp); the query x1 runs on the rank's own batch. 2 gloo ranks through the Trainer: the
    query encoder sees its rank's own query views, the key encoder a mix of both ranks' key views."""
    import torch.multiprocessing as mp

    from vicc_fast.engine.distributed import free_port

    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo once, before the fork
    mp.start_processes(
        _shuffle_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    all_keys = torch.cat([g["views"][1] for g in got])  # the global batch of key views, rank order
    for g in got:
        query_in, key_in = g["seen"]["query"][0], g["seen"]["key"][0]
        assert torch.equal(query_in, g["views"][0])  # not shuffled
        assert not torch.equal(key_in, g["views"][1])  # shuffled ...
        for row in key_in:  # ... among the global batch's key clips
            assert any(torch.equal(row, k) for k in all_keys)
    mixed = [
        sum(any(torch.equal(row, k) for k in got[r]["views"][1]) for row in g["seen"]["key"][0])
        for g in got
        for r in range(2)
    ]
    assert any(0 < n < 4 for n in mixed)  # some rank's key encoder saw rows of both ranks


def test_paper_config_finetunes_as_coclrs_readme():
    """configs/ucf101_coclr_s3d.yaml finetunes as CoCLR's README (eval/main_classifier.py --train_what ft
    --epochs 500 --schedule 400 450 with its defaults --optim adam --lr 1e-3 --wd 1e-3; the backbone at lr / 10),
    not ViCC's SGD 0.1: through eval.finetune.finetune one Adam step moves the encoder by lr / 10 and the
    classifier by lr, and the rate sampled over the epochs drops x0.1 at 400 and 450."""
    from tests.eval.test_finetune import ListLoader, SmallEncoder, _clips
    from vicc_fast import config as C
    from vicc_fast.eval.finetune import FinetuneModel, finetune
    from vicc_fast.eval.linear import lr_at, make_optimizer

    ft = C.load(C.CONFIG_DIR / "ucf101_coclr_s3d.yaml").eval.finetune
    w = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([w], ft.optim.value, ft.lr, ft.weight_decay)
    w.grad = torch.tensor([5.0, -0.5, 2.0])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-1e-3, 1e-3, -1e-3]))  # Adam's first step, lr 1e-3
    torch.manual_seed(0)
    model = FinetuneModel(SmallEncoder(), 3, dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    finetune(model, ListLoader([_clips([0, 1, 2, 0], [0, 1, 2, 3], 0)], 4), Stream.rgb, torch.device("cpu"), 1,
             lr=ft.lr, weight_decay=0.0, optim=ft.optim.value, milestones=ft.milestones,
             encoder_lr_scale=ft.encoder_lr_scale)  # fmt: skip
    for n, p in model.named_parameters():
        want = 1e-4 if n.startswith("encoder.") else 1e-3
        assert (p.detach() - before[n]).abs().max().item() == pytest.approx(want, rel=1e-3), n
    spe = 7
    total = ft.epochs * spe
    got = [lr_at(ft.lr, ep * spe, total, spe, ft.milestones) for ep in (0, 399, 400, 449, 450, 499)]
    assert got == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert (ft.epochs, ft.dropout) == (500, 0.9)
