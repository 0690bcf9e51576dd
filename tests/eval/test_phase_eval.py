"""evaluate_phase (the engine's per-phase hook) and the cross-rank gather of features, on in-memory loaders."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vicc_fast import config as C
from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch
from vicc_fast.eval.features import extract
from vicc_fast.eval.retrieval import evaluate_phase
from vicc_fast.methods.base import PhaseSpec

CLIPS = 3


class ListLoader:
    def __init__(self, batches, num_samples):
        self.batches, self.num_samples = batches, num_samples

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class MeanEncoder(nn.Module):
    feature_dim = 3

    def forward(self, x):
        return x.mean(dim=(2, 3, 4))


def clip_batches(labels, stream, videos, centres, seed, per_batch=2):
    """Eval-mode batches: CLIPS noisy clips of each of ``videos`` (class centre + noise), 2 videos per batch."""
    out = []
    for a in range(0, len(videos), per_batch):
        vids = videos[a : a + per_batch]
        idx = torch.tensor(vids).repeat_interleave(CLIPS)
        lbl = torch.tensor([labels[v] for v in vids]).repeat_interleave(CLIPS)
        # noise fixed per video, so any split of videos over ranks or batches sees the same clips
        noise = [
            torch.randn(CLIPS, 3, generator=torch.Generator().manual_seed(seed * 1000 + v)) for v in vids
        ]
        x = centres[lbl] + 0.2 * torch.cat(noise)
        x = x[:, :, None, None, None].expand(-1, -1, 2, 4, 4).contiguous()
        out.append(Batch(views={stream: [x]}, label=lbl, index=idx))
    return out


LABELS = {"train": [0, 1, 2] * 4, "test": [2, 1, 0, 0, 1, 2]}
CENTRES = {Stream.rgb: torch.eye(3) * 3, Stream.flow: torch.tensor([[0.0, 0, 3], [0, 3, 0], [3, 0, 0]])}


def factory(rank=0, world=1, dup=False):
    def make(cfg, split, stream):
        n = len(LABELS[split])
        vids = list(range(rank, n, world))
        if dup and 0 not in vids:
            vids = [0, *vids]
        seed = {"train": 0, "test": 1}[split] + (10 if stream is Stream.flow else 0)
        return ListLoader(clip_batches(LABELS[split], stream, vids, CENTRES[stream], seed), n)

    return make


class FakeMethod:
    def __init__(self):
        self.enc = {Stream.rgb: MeanEncoder(), Stream.flow: MeanEncoder()}

    def encoders(self):
        return self.enc


def phase(train, frozen):
    return PhaseSpec("p", train, frozen, (train,) if frozen is None else (train, frozen), 2, 1)


def test_evaluate_phase_single_and_cross():
    cfg = C.load(None, ["eval.retrieval.recall_ks=[1,5]"])
    dev = torch.device("cpu")
    res = evaluate_phase(cfg, FakeMethod(), phase(Stream.flow, None), 0, 1, dev, loader_factory=factory())
    assert res == {"flow/R@1": 100.0, "flow/R@5": 100.0}
    res = evaluate_phase(
        cfg, FakeMethod(), phase(Stream.rgb, Stream.flow), 0, 1, dev, loader_factory=factory()
    )
    assert set(res) == {f"{s}/R@{k}" for s in ("rgb", "flow", "rf_sum", "rf_concat") for k in (1, 5)}
    assert all(v == 100.0 for v in res.values())


def test_evaluate_phase_scores_both_streams_on_the_videos_both_kept():
    """A train video left out by the flow loader only (data.on_bad_sample=skip): R+F pairs the two streams'
    rows by video (the same as leaving it out of both), instead of failing on two lengths."""
    cfg = C.load(None, ["eval.retrieval.recall_ks=[1,5]"])

    def factory_without(left_out):  # stream -> the train videos its loader leaves out
        def make(cfg, split, stream):
            n = len(LABELS[split])
            gone = left_out.get(stream, []) if split == "train" else []
            vids = [v for v in range(n) if v not in gone]
            seed = {"train": 0, "test": 1}[split] + (10 if stream is Stream.flow else 0)
            loader = ListLoader(clip_batches(LABELS[split], stream, vids, CENTRES[stream], seed), n)
            loader.excluded_indices = lambda: torch.tensor(gone, dtype=torch.long)
            return loader

        return make

    cross = phase(Stream.rgb, Stream.flow)
    one = evaluate_phase(
        cfg, FakeMethod(), cross, 0, 1, torch.device("cpu"), factory_without({Stream.flow: [1]})
    )
    both = factory_without({Stream.flow: [1], Stream.rgb: [1]})
    assert one == evaluate_phase(cfg, FakeMethod(), cross, 0, 1, torch.device("cpu"), both)
    assert set(one) == {f"{s}/R@{k}" for s in ("rgb", "flow", "rf_sum", "rf_concat") for k in (1, 5)}


def _worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    res = {}
    try:
        for dup in (False, True):
            loader = factory(rank, world, dup)(None, "train", Stream.rgb)
            try:
                f, lbl, _ = extract(MeanEncoder(), loader, torch.device("cpu"), stream=Stream.rgb)
                res[dup] = {"f": f, "l": lbl}
            except RuntimeError as exc:
                res[dup] = {"error": str(exc)}
        torch.save(res, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_extract_gathers_across_ranks(tmp_path):
    """Two gloo ranks, each given half the videos: both end with the whole split, equal to one process; a video
    delivered by both ranks is an error on both."""
    single = extract(
        MeanEncoder(), factory()(None, "train", Stream.rgb), torch.device("cpu"), stream=Stream.rgb
    )
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/pg", out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=False) for r in range(2))
    assert torch.equal(r0[False]["f"], r1[False]["f"]) and torch.equal(r0[False]["l"], r1[False]["l"])
    assert r0[False]["l"].tolist() == LABELS["train"]
    torch.testing.assert_close(r0[False]["f"], single[0])
    assert "seen by several ranks" in r0[True]["error"] and "seen by several ranks" in r1[True]["error"]


def test_evaluate_phase_joint_reports_both_streams_and_fusion():
    """A joint phase (GOCA) trains both encoders: both are evaluated, and their R+F, with no frozen stream."""
    cfg = C.load(None, ["eval.retrieval.recall_ks=[1]"])
    joint = PhaseSpec("joint", Stream.rgb, None, (Stream.rgb, Stream.flow), 2, 1, "joint", joint=True)
    res = evaluate_phase(cfg, FakeMethod(), joint, 0, 1, torch.device("cpu"), loader_factory=factory())
    assert set(res) == {f"{s}/R@1" for s in ("rgb", "flow", "rf_sum", "rf_concat")}
    assert joint.row_labels() == {Stream.rgb: "RGB-joint", Stream.flow: "Flow-joint"}


def test_evaluate_phase_reads_features_as_the_released_retrieval(monkeypatch):
    """The per-phase retrieval asks its loaders for retrieval_cfg's settings (one centre-cropped clip per train
    video) and normalises each clip before the video average (eval.retrieval.clip_l2norm)."""
    cfg = C.load(None, ["eval.retrieval.recall_ks=[1]", "data.eval.crop=tencrop"])
    asked = []
    inner = factory()

    def spy(c, split, stream):  # noqa: ANN001, ANN202
        asked.append((split, c.data.eval.crop, c.data.eval.clips))
        return inner(c, split, stream)

    dev = torch.device("cpu")
    evaluate_phase(cfg, FakeMethod(), phase(Stream.rgb, None), 0, 1, dev, loader_factory=spy)
    assert asked == [("train", C.EvalCrop.center, 1), ("test", C.EvalCrop.center, cfg.data.eval.clips)]
    calls = []
    import vicc_fast.eval.features as feats

    real = feats.extract

    def record(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(k.get("clip_l2norm"))
        return real(*a, **k)

    monkeypatch.setattr(feats, "extract", record)
    evaluate_phase(cfg, FakeMethod(), phase(Stream.rgb, None), 0, 1, dev, loader_factory=factory())
    off = C.load(None, ["eval.retrieval.recall_ks=[1]", "eval.retrieval.clip_l2norm=false"])
    evaluate_phase(off, FakeMethod(), phase(Stream.rgb, None), 0, 1, dev, loader_factory=factory())
    assert calls == [True, True, False, False]
