import pytest
import torch

from vicc_fast.config import Stream
from vicc_fast.eval.features import centre_normalise
from vicc_fast.eval.retrieval import fused_recall, nearest_neighbours, recall_at_k


def test_recall_known_neighbours():
    # gallery: four unit vectors on axes, classes 0,1,2,3; queries placed next to known gallery items
    gallery = torch.eye(4)
    gl = torch.tensor([0, 1, 2, 3])
    # q0 nearest g0 (class 0, hit at 1); q1 nearest g2 then g1 (label 1 -> miss at 1, hit at 2)
    query = torch.tensor([[1.0, 0.1, 0.0, 0.0], [0.0, 0.5, 1.0, 0.0]])
    ql = torch.tensor([0, 1])
    r = recall_at_k(query, ql, gallery, gl, ks=(1, 2, 4))
    assert r == {"R@1": 50.0, "R@2": 100.0, "R@4": 100.0}
    _, idx = nearest_neighbours(query, gallery, 2)
    assert idx.tolist() == [[0, 1], [2, 1]]


def test_recall_is_cosine_not_dot():
    gallery = torch.tensor([[10.0, 1.0], [0.5, 0.5]])  # big norm must not win over direction
    r = recall_at_k(torch.tensor([[1.0, 1.0]]), torch.tensor([1]), gallery, torch.tensor([0, 1]), ks=(1,))
    assert r["R@1"] == 100.0


def test_k_larger_than_gallery_is_capped():
    r = recall_at_k(
        torch.randn(5, 3),
        torch.zeros(5, dtype=torch.long),
        torch.randn(2, 3),
        torch.tensor([1, 0]),
        ks=(1, 50),
    )
    assert r["R@50"] == 100.0


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(37, 16, generator=g), torch.randn(101, 16, generator=g)
    s0, i0 = nearest_neighbours(q, gal, 10, chunk=10_000, gallery_chunk=10_000)
    s1, i1 = nearest_neighbours(q, gal, 10, chunk=4, gallery_chunk=7)
    assert torch.equal(i0, i1)
    torch.testing.assert_close(s0, s1)
    ql, gl = torch.randint(0, 5, (37,), generator=g), torch.randint(0, 5, (101,), generator=g)
    assert recall_at_k(q, ql, gal, gl, (1, 5, 20), chunk=3, gallery_chunk=5) == recall_at_k(
        q, ql, gal, gl, (1, 5, 20)
    )


def test_sum_fusion_equals_summed_similarity_matrices():
    g = torch.Generator().manual_seed(1)
    qr, qf = torch.randn(20, 8, generator=g), torch.randn(20, 6, generator=g)
    gr, gf = torch.randn(30, 8, generator=g), torch.randn(30, 6, generator=g)
    n = torch.nn.functional.normalize
    sim = n(qr, dim=1) @ n(gr, dim=1).T + n(qf, dim=1) @ n(gf, dim=1).T
    s, i = nearest_neighbours([qr, qf], [gr, gf], 5, chunk=6, gallery_chunk=11)
    ref_s, ref_i = sim.topk(5, dim=1)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s)


def test_fusion_uses_both_streams():
    # RGB separates classes on axis 0 only for class 0; flow separates only class 1; R+F gets both right
    gl = torch.tensor([0, 1])
    rgb_g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    flow_g = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ql = torch.tensor([0, 1])
    rgb_q = torch.tensor([[1.0, 0.0], [1.0, 0.9]])  # query 1 wrong in RGB (closer to g0)
    flow_q = torch.tensor([[1.0, 0.9], [1.0, 0.0]])  # query 0 wrong in flow (closer to g1)
    assert recall_at_k(rgb_q, ql, rgb_g, gl, (1,))["R@1"] == 50.0
    assert recall_at_k(flow_q, ql, flow_g, gl, (1,))["R@1"] == 50.0
    assert recall_at_k([rgb_q, flow_q], ql, [rgb_g, flow_g], gl, (1,))["R@1"] == 100.0


def test_fused_recall_keys_and_concat_differs_by_scale():
    g = torch.Generator().manual_seed(2)
    labels_g = torch.arange(40) % 4
    labels_q = torch.arange(12) % 4
    centres = torch.randn(4, 8, generator=g) * 3
    rgb_g = centres[labels_g] + torch.randn(40, 8, generator=g)
    rgb_q = centres[labels_q] + torch.randn(12, 8, generator=g)
    noise_g, noise_q = torch.randn(40, 8, generator=g), torch.randn(12, 8, generator=g)  # flow: no class info
    out = fused_recall(
        {Stream.rgb: rgb_q, Stream.flow: noise_q * 100},
        labels_q,
        {Stream.rgb: rgb_g, Stream.flow: noise_g * 100},
        labels_g,
        ks=(1, 5),
    )
    assert set(out) == {f"{s}/R@{k}" for s in ("rgb", "flow", "rf_sum", "rf_concat") for k in (1, 5)}
    assert out["rgb/R@1"] == 100.0
    # concatenation of raw features lets the 100x-scaled noise stream dominate; summed cosines do not
    assert out["rf_concat/R@1"] < out["rf_sum/R@1"]


def test_centre_normalise():
    tr = torch.tensor([[2.0, 0.0], [0.0, 2.0]]) + 5
    te = torch.tensor([[7.0, 5.0]])
    tr2, te2 = centre_normalise(tr, te)
    torch.testing.assert_close(tr2.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(te2, torch.tensor([[1.0, -1.0]]) / 2**0.5)


@pytest.mark.parametrize(
    "q,g,ql,gl",
    [
        (torch.randn(3, 4), torch.randn(5, 3), torch.zeros(3), torch.zeros(5)),  # dim mismatch
        (torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2), torch.zeros(5)),  # label count
        (torch.randn(0, 4), torch.randn(5, 4), torch.zeros(0), torch.zeros(5)),  # empty
    ],
)
def test_bad_shapes(q, g, ql, gl):
    with pytest.raises(ValueError):
        recall_at_k(q, ql.long(), g, gl.long(), (1,))


def test_retrieval_centres_each_split_by_its_own_mean_as_released():
    """Released ViCC/CoCLR retrieval: test and train features each minus their own mean, then L2. A shift of
    every test feature (a domain offset) is then invisible; centring by the train mean is not."""
    from vicc_fast.config import EvalConfig

    assert EvalConfig().retrieval.centre_each
    g = torch.Generator().manual_seed(3)
    labels_g, labels_q = torch.arange(40) % 4, torch.arange(12) % 4
    centres = torch.randn(4, 8, generator=g)
    gal = centres[labels_g] + 0.3 * torch.randn(40, 8, generator=g)
    qry = centres[labels_q] + 0.3 * torch.randn(12, 8, generator=g)
    base = fused_recall({Stream.rgb: qry}, labels_q, {Stream.rgb: gal}, labels_g, ks=(1,))
    shifted = {Stream.rgb: qry + 50.0}
    own = fused_recall(shifted, labels_q, {Stream.rgb: gal}, labels_g, ks=(1,))
    by_train = fused_recall(shifted, labels_q, {Stream.rgb: gal}, labels_g, ks=(1,), centre_each=False)
    assert own == base and by_train["rgb/R@1"] < base["rgb/R@1"]


def test_retrieval_reads_one_centre_cropped_clip_per_train_video_as_released():
    """Released test_retrieval: CenterCrop (its --ten_crop is unused there) and, for the train split
    (mode='train' in its dataset), one clip per video; test videos keep the eval clips. The demo keeps its
    own data.eval.clips and crop for both splits."""
    from vicc_fast import config as C
    from vicc_fast.eval.retrieval import retrieval_cfg

    assert (C.EvalConfig().retrieval.crop, C.EvalConfig().retrieval.train_clips) == (C.EvalCrop.center, 1)
    paper = C.load(C.CONFIG_DIR / "ucf101_s3d.yaml")
    assert (paper.data.eval.crop, paper.data.eval.clips) == (C.EvalCrop.tencrop, 10)
    train, test = retrieval_cfg(paper, "train").data.eval, retrieval_cfg(paper, "test").data.eval
    assert (train.crop, train.clips) == (C.EvalCrop.center, 1)
    assert (test.crop, test.clips) == (C.EvalCrop.center, 10)
    # test videos: every half-overlapping window (released test sampler); the one train clip: a random window
    assert C.DataConfig().eval.windows is C.EvalWindows.overlap
    assert (test.windows, train.windows) == (C.EvalWindows.overlap, C.EvalWindows.random)
    for name in ("ucf101_s3d", "ucf101_r21d", "ucf101_r3d", "hmdb51_s3d", "hmdb51_r21d", "ucf101_coclr_s3d"):
        assert C.load(C.CONFIG_DIR / f"{name}.yaml").data.eval.windows is C.EvalWindows.overlap
    assert paper.data.eval.crop is C.EvalCrop.tencrop  # the linear probe / finetune test keep ten-crop
    demo = C.load(C.DEFAULT_CONFIG)
    for split in ("train", "test"):
        assert retrieval_cfg(demo, split).data == demo.data
    assert not demo.eval.retrieval.clip_l2norm and not demo.eval.retrieval.centre_each
