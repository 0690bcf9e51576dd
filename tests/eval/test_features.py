import pytest
import torch
from torch import nn

from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch
from vicc_fast.eval.features import extract


class ListLoader:
    """An in-memory eval loader: the Loader contract's iteration + num_samples, over given batches."""

    def __init__(self, batches, num_samples):
        self.batches, self.num_samples = batches, num_samples

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class MeanEncoder(nn.Module):
    """[B, C, T, H, W] -> [B, C]: spatial-temporal mean, so features are known in closed form."""

    feature_dim = 3

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)  # present so train/eval mode matters

    def forward(self, x):
        return x.mean(dim=(2, 3, 4))


def _batch(values, index, label):
    x = torch.tensor(values, dtype=torch.float32)[:, :, None, None, None].expand(-1, -1, 2, 4, 4)
    return Batch(views={Stream.rgb: [x]}, label=torch.tensor(label), index=torch.tensor(index))


def test_extract_averages_clips_per_video_in_index_order():
    # video 1's clips are split across two batches; video 0 arrives last
    b1 = _batch([[1, 0, 0], [3, 0, 0]], index=[1, 1], label=[7, 7])
    b2 = _batch([[5, 0, 0], [0, 2, 0], [0, 4, 0]], index=[1, 0, 0], label=[7, 4, 4])
    enc = MeanEncoder().train()
    feats, labels, index = extract(enc, ListLoader([b1, b2], 2), torch.device("cpu"))
    torch.testing.assert_close(feats, torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]]))
    assert labels.tolist() == [4, 7] and index.tolist() == [0, 1]
    assert enc.training  # mode restored


def test_extract_rejects_a_video_without_clips():
    with pytest.raises(RuntimeError, match="1 got no clip"):
        extract(MeanEncoder(), ListLoader([_batch([[1, 0, 0]], [0], [0])], 2), torch.device("cpu"))


def test_extract_rejects_out_of_range_index():
    with pytest.raises(ValueError, match="outside"):
        extract(MeanEncoder(), ListLoader([_batch([[1, 0, 0]], [5], [0])], 2), torch.device("cpu"))


def test_extract_wrong_stream():
    with pytest.raises(ValueError, match="no flow view"):
        extract(
            MeanEncoder(),
            ListLoader([_batch([[1, 0, 0]], [0], [0])], 1),
            torch.device("cpu"),
            stream=Stream.flow,
        )


def test_feature_cache_hit_and_key_sensitivity(tmp_path):
    from vicc_fast import config as C
    from vicc_fast.eval.cache import FeatureCache, cache_key

    cfg = C.load(None)
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(3, 2), torch.tensor([0, 1, 0]), torch.arange(3)

    cache = FeatureCache(tmp_path)
    k = cache_key("abc", Stream.rgb, "train", cfg, "m")
    a = cache.get(k, compute)
    b = cache.get(k, compute)
    assert len(calls) == 1 and torch.equal(a[0], b[0]) and cache.hits == 1
    cfg2 = C.load(None, ["data.eval.clips=3"])
    assert cache_key("abc", Stream.rgb, "train", cfg2, "m") != k
    assert cache_key("abd", Stream.rgb, "train", cfg, "m") != k
    assert cache_key("abc", Stream.flow, "train", cfg, "m") != k
    skip = C.load(None, ["data.on_bad_sample=skip"])  # features without the bad videos: not for an error run
    assert cache_key("abc", Stream.rgb, "train", skip, "m") != k
    cache.path(k).write_bytes(b"garbage")  # a damaged entry is recomputed
    with pytest.warns(UserWarning, match="unreadable"):
        cache.get(k, compute)
    assert len(calls) == 2


def test_extract_low_precision_clips_under_amp():
    # with train.amp=bf16 the loader hands over bf16 clips; fp32 conv weights need autocast, on CPU as on GPU
    enc = nn.Sequential(nn.Conv3d(3, 4, 1), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    b = _batch([[1, 0, 0], [0, 1, 0]], index=[0, 1], label=[0, 1])
    b.views[Stream.rgb][0] = b.views[Stream.rgb][0].to(torch.bfloat16)
    feats, _, _ = extract(enc, ListLoader([b], 2), torch.device("cpu"), amp="bf16")
    assert feats.dtype == torch.float32 and feats.shape == (2, 4) and torch.isfinite(feats).all()


def test_extract_l2_normalises_each_clip_before_the_video_average_as_released():
    """Released test_retrieval: clips go through LinearClassifier with use_l2_norm (--train_what last, the
    default), so each clip is a unit vector before feature.mean(0). A long clip then weighs no more than a
    short one; averaging raw clips (the switch) lets the larger norm win."""
    from vicc_fast.config import EvalConfig

    assert EvalConfig().retrieval.clip_l2norm
    loader = ListLoader([_batch([[3.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]], [0, 0, 1], [0, 0, 1])], 2)
    released, _, _ = extract(MeanEncoder(), loader, torch.device("cpu"), clip_l2norm=True)
    raw, _, _ = extract(MeanEncoder(), loader, torch.device("cpu"))
    assert torch.allclose(released, torch.tensor([[0.5, 0.5, 0], [0, 0, 1.0]]))
    assert torch.allclose(raw, torch.tensor([[1.5, 0.5, 0], [0, 0, 2.0]]))


def test_in_chunks_never_forwards_more_than_the_budget_and_equals_one_forward():
    """Overlapping eval windows can put every window of a long video in one batch: the encoder sees at most
    ``rows`` clips at a time, and the result equals one forward."""
    from vicc_fast.eval.features import in_chunks

    seen = []
    lin = torch.nn.Linear(4, 3)

    def fn(x):
        seen.append(x.shape[0])
        return lin(x)

    x = torch.randn(23, 4)
    torch.testing.assert_close(in_chunks(fn, x, 5), lin(x))
    assert max(seen) == 5 and sum(seen) == 23
    seen.clear()
    in_chunks(fn, x, None)
    assert seen == [23]


def test_left_out_videos_get_no_row_and_the_kept_ones_keep_their_index(tmp_path):
    """A real eval loader over a split with two videos the released filter drops (6 frames, clips of 12:
    data.short_videos=pad leaves them out): features and test probabilities come for the kept videos only,
    in index order, named by their split indices, instead of an error about videos without clips."""
    import numpy as np

    from data_prep.patterns import make_set
    from tests.data.conftest import cfg_for
    from vicc_fast.data.loader import build_loader
    from vicc_fast.eval.finetune import predict_videos

    root = make_set(tmp_path / "s", "codes", n_train=4, n_test=1, short=(1, 2))
    cfg = cfg_for(root, "data.num_frames=12")
    with pytest.warns(UserWarning, match="left out"):
        ld = build_loader(cfg, "train", "eval", (Stream.rgb,), 1, 0, 1, torch.device("cpu"))
    assert ld.num_videos == 4 and ld.num_samples == 2 and ld.excluded_indices().tolist() == [1, 2]
    feats, labels, index = extract(MeanEncoder(), ld, torch.device("cpu"))
    assert index.tolist() == [0, 3] and feats.shape == (2, 3) and np.isfinite(feats.numpy()).all()

    class Probs(nn.Module):
        def forward(self, x):
            return torch.stack([x.mean(dim=(1, 2, 3, 4)), -x.mean(dim=(1, 2, 3, 4))], 1)

    probs, plabels, pindex = predict_videos(Probs(), ld, Stream.rgb, torch.device("cpu"), ld.num_videos)
    assert probs.shape == (2, 2) and torch.equal(plabels, labels) and torch.equal(pindex, index)


def test_a_video_read_twice_is_an_error_not_a_skewed_average(tmp_path):
    """The eval loader promises each video's clip rows (clips_per_video); a pipeline that replays a batch (as
    DALI's rebuilt after a skip once did) would average some videos over duplicated clips: extract refuses."""
    from data_prep.patterns import make_set
    from tests.data.conftest import cfg_for
    from vicc_fast.data.loader import build_loader

    root = make_set(tmp_path / "s", "codes", n_train=4, n_test=1)
    ld = build_loader(
        cfg_for(root, "data.eval.clips=2"), "train", "eval", (Stream.rgb,), 1, 0, 1, torch.device("cpu")
    )
    assert ld.clips_per_video().tolist() == [2, 2, 2, 2]
    extract(MeanEncoder(), ld, torch.device("cpu"))  # as promised

    class Replaying:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __iter__(self):
            batches = list(self.inner)
            yield from [*batches, batches[0]]

    with pytest.raises(RuntimeError, match="another number of clips than it promised"):
        extract(MeanEncoder(), Replaying(ld), torch.device("cpu"))
