import numpy as np
import pytest
import torch

from vicc_fast.eval.plots import (
    PNG_SIGNATURE,
    check_png,
    log_embedding,
    log_png,
    read_scalars,
    retrieval_grid,
    training_curves,
    tsne_plot,
)


def _valid_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = check_png(path)
    assert img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0  # something was drawn


def test_tsne_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    feats = torch.randn(4, 8, generator=g)[labels] * 5 + torch.randn(40, 8, generator=g)
    p = tsne_plot(feats, labels, ["a", "b", "c", "d"], tmp_path / "tsne.png", max_points=30, iterations=250)
    _valid_png(p)


def test_tsne_collapsed_features_do_not_crash(tmp_path):
    # identical features make scikit-learn's Barnes-Hut t-SNE segfault; the plot must still be written
    p = tsne_plot(torch.zeros(12, 4), torch.arange(12) % 3, ["a", "b", "c"], tmp_path / "t.png")
    check_png(p)
    with pytest.raises(ValueError, match="NaN"):
        tsne_plot(torch.full((5, 2), float("nan")), torch.zeros(5), ["a"], tmp_path / "n.png")


def test_retrieval_grid_png(tmp_path):
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)  # noqa: E731
    p = retrieval_grid(
        [img(), img()],
        ["run", "jump"],
        [[img() for _ in range(5)], [img() for _ in range(5)]],
        [["run", "jump", "run", "run", "swim"], ["jump"] * 5],
        [[True, False, True, True, False], [True] * 5],
        tmp_path / "grid.png",
        title="RGB-2",
    )
    _valid_png(p)


def test_training_curves_png_and_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for step in range(20):
        w.add_scalar("train/loss", 5.0 / (step + 1), step)
        w.add_scalar("train/lr", 0.1 * (1 - step / 20), step)
    w.close()
    w = SummaryWriter(log_dir=str(tmp_path / "tb" / "eval"))  # evaluation scalars are not training curves
    w.add_scalar("eval/last/retrieval/rgb/R@1", 50.0, 0)
    w.close()
    assert set(read_scalars(tmp_path / "tb")) == {"train/loss", "train/lr"}
    p = training_curves(tmp_path / "tb", tmp_path / "curves.png")
    _valid_png(p)
    assert training_curves(tmp_path / "empty", tmp_path / "none.png") is None

    w = SummaryWriter(log_dir=str(tmp_path / "tb_eval"))
    log_png(w, "eval/curves", p)
    log_embedding(w, "rgb", torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1]), ["a", "b"])
    w.close()
    assert list((tmp_path / "tb_eval").rglob("events.out.tfevents.*"))
    assert list((tmp_path / "tb_eval").rglob("projector_config.pbtxt"))


def test_check_png_rejects_non_png(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        check_png(tmp_path / "x.png")


def test_curves_title_names_the_run_not_its_folder(tmp_path, tiny_shards, save_ckpt, monkeypatch):
    """`eval curves` on a run in a temporary folder: the picture's title names the method, backbone, data set
    and seed from the run's config and manifest, and no path (the README's figure was once titled /tmp/pic0)."""
    from torch.utils.tensorboard import SummaryWriter

    from vicc_fast.eval import plots
    from vicc_fast.eval.__main__ import main

    run = tmp_path / "pic0"
    ckpt = save_ckpt(
        run / "checkpoints" / "rgb1.pt", ["rgb1"], overrides=["train.seed=3", f"train.out_dir={run}"]
    )
    w = SummaryWriter(log_dir=str(run / "tb"))
    for step in range(5):
        w.add_scalar("rgb1/loss", 5.0 / (step + 1), step)
    w.close()
    titles = []

    def spy(tb_dir, path, max_panels=12, title=""):
        titles.append(title)
        return training_curves(tb_dir, path, max_panels, title)

    monkeypatch.setattr(plots, "training_curves", spy)
    argv = ["curves", "--ckpt", str(ckpt), f"data.root={tiny_shards}", "--no-progress", "--no-tensorboard"]
    assert main(argv) == 0
    (title,) = titles
    assert title == "training curves: ViCC, tiny 3D CNN, data set (3 classes), seed 3"
    assert "/" not in title.replace("R(2+1)D", "") and str(tmp_path) not in title and "pic0" not in title
    _valid_png(run / "eval" / "rgb1" / "training_curves.png")


def test_dataset_name_from_build_settings():
    from vicc_fast.eval.inputs import dataset_name

    assert (
        dataset_name({"source": "ucf101", "split_id": 1, "synthetic": {"seed": 0}}, 8)
        == "synthetic (8 classes)"
    )
    assert (
        dataset_name({"source": "ucf101", "split_id": 1, "root": "/tmp/x"}, 101)
        == "ucf101 split 1 (101 classes)"
    )
    assert dataset_name({"source": "folder", "root": "/tmp/x"}, 3) == "folder (3 classes)"
