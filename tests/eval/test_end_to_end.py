"""The CLI and the engine's per-phase hook on a real (tiny) shard set through the real DALI CPU loader."""

import json

import pytest
import torch

from vicc_fast.config import Stream
from vicc_fast.eval.__main__ import main
from vicc_fast.eval.plots import check_png

DATA = ["data.num_frames=4", "data.crop_size=16", "data.eval.clips=2", "train.amp='off'"]


def test_cli_retrieval_cluster_linear_grid_then_cache(tmp_path, make_shards, save_ckpt, capsys):
    root = tmp_path / "shards"
    make_shards(root, [0, 1, 2] * 3, [0, 1, 2], ["Walk", "Run", "Jump"], frames=8, size=(24, 32))
    ck = save_ckpt(
        tmp_path / "run" / "checkpoints" / "flow1.pt",
        ["rgb1", "flow1"],
        overrides=[f"data.root={root}", *DATA],
    )
    common = ["--ckpt", str(ck), "--no-progress", "eval.batch_size=4", "eval.cluster.restarts=1"]
    assert main(["retrieval", *common]) == 0
    assert main(["cluster", *common]) == 0
    assert main(["linear", *common, "eval.linear.augment=false", "eval.linear.epochs=3"]) == 0
    assert main(["grid", *common]) == 0
    out = capsys.readouterr().out
    assert "| RGB-1 |" in out and "| Flow-1 |" in out and "| R+F-1 |" in out

    doc = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["checkpoints"]["flow1"]
    assert doc["labels"] == {"rgb": "RGB-1", "flow": "Flow-1", "rf": "R+F-1"}
    assert {"rgb/R@1", "flow/R@1", "rf_sum/R@1", "rf_concat/R@50"} <= set(doc["retrieval"])
    assert {"rgb/top1", "flow/top5", "rf/top1"} <= set(doc["linear"])
    assert {"rgb/kmeans/nmi", "flow/kmeans/acc", "rgb/proto/purity"} <= set(doc["cluster"])
    for stream in ("rgb", "flow"):
        check_png(tmp_path / "run" / "eval" / "flow1" / f"retrieval_{stream}.png")
    # every feature set was extracted once (4 misses: 2 streams x 2 splits); a repeat reads only the cache
    assert main(["retrieval", *common]) == 0
    doc = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["checkpoints"]["flow1"]
    assert doc["cache"]["misses"] == 0 and doc["cache"]["hits"] > 0


def test_evaluate_phase_with_real_loader(tmp_path, make_shards, tiny_overrides):
    from vicc_fast import config as C
    from vicc_fast.eval.retrieval import evaluate_phase
    from vicc_fast.methods import build_method

    root = tmp_path / "shards"
    make_shards(root, [0, 1] * 3, [1, 0], ["a", "b"], frames=8, size=(24, 32))
    cfg = C.load(
        None,
        [*tiny_overrides, f"data.root={root}", *DATA, "eval.batch_size=4", "eval.retrieval.recall_ks=[1,2]"],
    )
    method = build_method(cfg)
    cross = next(p for p in method.phases() if p.frozen_stream is not None)
    method.setup_phase(cross)
    method.train()
    res = evaluate_phase(cfg, method, cross, 0, 1, torch.device("cpu"))
    assert set(res) == {f"{s}/R@{k}" for s in ("rgb", "flow", "rf_sum", "rf_concat") for k in (1, 2)}
    assert all(0.0 <= v <= 100.0 for v in res.values())
    assert method.nets["rgb"].training  # the hook leaves the training stream in train mode


@pytest.mark.filterwarnings("ignore:skipping bad sample")  # each protocol's loader meets it again
def test_streams_that_kept_different_videos_are_scored_on_the_videos_both_kept(
    tmp_path, save_ckpt, monkeypatch
):
    """data.on_bad_sample=skip: a train video whose RGB file is truncated is left out of the RGB stream only.
    Every protocol then scores both streams and R+F over the videos both kept (the flow stream's extra row
    neither shifts the labels nor fails on a shape), and the results say how many were left out."""
    import pytest

    from data_prep.patterns import make_set
    from vicc_fast.eval.runner import Evaluation

    root = make_set(tmp_path / "shards", "codes", n_train=6, n_test=3, corrupt=(2,))
    ck = save_ckpt(
        tmp_path / "run" / "checkpoints" / "flow1.pt",
        ["rgb1", "flow1"],
        overrides=[f"data.root={root}", *DATA, "data.on_bad_sample=skip"],
    )
    ev = Evaluation(ck, ["eval.batch_size=4", "eval.cluster.restarts=1", "eval.linear.augment=false",
                         "eval.linear.epochs=2", "eval.linear.test_clips=false"], progress=False, tensorboard=False)  # fmt: skip
    with pytest.warns(UserWarning, match="train000002"):
        train, labels, index = ev.rows("train")
    assert index.tolist() == [0, 1, 3, 4, 5] and all(f.shape[0] == 5 for f in train.values())
    assert torch.equal(labels, torch.tensor([0, 1, 3, 4, 5]) % 3)  # make_set: label = index % 3
    assert ev.features(Stream.flow, "train")[0].shape[0] == 6  # flow kept it
    assert {"rgb/R@1", "flow/R@1", "rf_sum/R@1"} <= set(ev.retrieval())
    assert {"rgb/top1", "flow/top1", "rf/top1"} <= set(ev.linear())
    assert "flow/kmeans/acc" in ev.cluster()
    from vicc_fast.eval import runner

    shown, thumbnail = [], runner.thumbnail
    monkeypatch.setattr(
        runner, "thumbnail", lambda data, split, i: shown.append((split, i)) or thumbnail(data, split, i)
    )
    assert len(ev.grid()) == 2
    # the grid shows videos by their split index: the 5 kept train videos are the top 5, video 2 never
    assert {i for split, i in shown if split == "train"} == {0, 1, 3, 4, 5}
    assert ev.entry["videos"] == {
        "train": {"evaluated": 5, "left_out": 1},
        "test": {"evaluated": 3, "left_out": 0},
    }
    ev.close()


def test_cluster_protocol_follows_the_method_and_refits_k_classes(tmp_path, make_shards, save_ckpt):
    """eval.cluster.protocol=auto: ViCC's (Hungarian; prototype rows from K = #classes refitted prototypes,
    supp. 3.1.2, or the training ones with eval.cluster.prototypes=trained) for a ViCC checkpoint, GOCA's (K-means
    majority vote, Acc / NMI / F1 averaged over eval.cluster.runs runs, 4.3) for a GOCA checkpoint."""
    from vicc_fast.eval.runner import Evaluation

    root = tmp_path / "shards"
    make_shards(root, [0, 1, 2] * 3, [0, 1, 2], ["Walk", "Run", "Jump"], frames=8, size=(24, 32))
    common = ["eval.batch_size=4", "eval.cluster.restarts=1", "eval.cluster.protocol=auto"]
    vicc = save_ckpt(tmp_path / "vicc" / "checkpoints" / "flow1.pt", ["rgb1", "flow1"],
                     overrides=[f"data.root={root}", *DATA])  # fmt: skip
    ev = Evaluation(vicc, [*common, "eval.cluster.prototypes=refit", "eval.cluster.refit_epochs=3"],
                    progress=False, tensorboard=False)  # fmt: skip
    res = ev.cluster()
    assert ev.entry["cluster_settings"]["protocol"] == "hungarian"
    assert {"rgb/kmeans/acc", "flow/proto/ari"} <= set(res) and not any("majority" in k for k in res)
    train, test = ev.rows("train")[0][Stream.rgb], ev.rows("test")[0][Stream.rgb]
    assert ev.prototype_scores(Stream.rgb, test, train).shape == (3, 3)  # K = 3 classes, refitted
    ev.cfg.eval.cluster.prototypes = "trained"
    assert ev.prototype_scores(Stream.rgb, test, train).shape == (3, 5)  # the model's 5 training prototypes
    goca = save_ckpt(tmp_path / "goca" / "checkpoints" / "joint.pt", ["joint"],
                     overrides=[f"data.root={root}", *DATA, "method.name=goca"])  # fmt: skip
    ev = Evaluation(goca, [*common, "eval.cluster.runs=4"], progress=False, tensorboard=False)
    res = ev.cluster()
    assert ev.entry["cluster_settings"]["protocol"] == "majority"
    assert set(res) == {f"{s}/majority/{k}" for s in ("rgb", "flow")
                        for k in ("acc", "acc_sd", "nmi", "nmi_sd", "f1", "f1_sd", "runs")}  # fmt: skip
    assert res["rgb/majority/runs"] == 4 and 0 <= res["flow/majority/f1"] <= 100
