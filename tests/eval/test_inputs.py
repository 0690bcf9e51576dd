import pytest
import torch

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.eval.inputs import EvalInputError, check_dataset, load_checkpoint, thumbnail


def test_dataset_ok_and_labels(tiny_shards):
    info = check_dataset(tiny_shards)
    assert info.classes == ["Walk", "Run", "Jump"]
    assert info.num_samples == {"train": 8, "test": 4}
    assert info.labels["train"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert info.labels["test"].tolist() == [0, 1, 2, 2]
    img = thumbnail(info, "test", 1, size=32)
    assert img.dtype.name == "uint8" and img.shape == (32, 48, 3)


def test_dataset_without_test_split(tmp_path, make_shards):
    make_shards(tmp_path, [0, 1], None, ["a", "b"])
    with pytest.raises(EvalInputError, match="no test split"):
        check_dataset(tmp_path)


def test_dataset_classes_differ(tmp_path, make_shards):
    make_shards(tmp_path, [0, 1, 0], [0, 2], ["a", "b", "c"])
    with pytest.raises(EvalInputError, match=r"classes differ.*train only: \['b'\].*test only: \['c'\]"):
        check_dataset(tmp_path)


def test_dataset_missing_manifest_and_shard(tmp_path, make_shards):
    with pytest.raises(EvalInputError, match="manifest not found"):
        check_dataset(tmp_path)
    make_shards(tmp_path, [0, 1], [0, 1], ["a", "b"], shard_size=1)
    (tmp_path / "train-000001.tar").unlink()
    with pytest.raises(EvalInputError, match="shard file missing: .*train-000001.tar"):
        check_dataset(tmp_path)


def test_checkpoint_labels_by_stage(tmp_path, save_ckpt):
    p = save_ckpt(tmp_path / "rgb1.pt", ["rgb1"])
    assert load_checkpoint(p).labels == {"rgb": "RGB-1"}
    p = save_ckpt(tmp_path / "flow1.pt", ["rgb1", "flow1"])
    assert load_checkpoint(p).labels == {"rgb": "RGB-1", "flow": "Flow-1", "rf": "R+F-1"}
    p = save_ckpt(tmp_path / "last.pt", ["rgb1", "flow1", "cross_rgb_c1", "cross_flow_c1"])
    ck = load_checkpoint(p)
    assert ck.labels == {"rgb": "RGB-2", "flow": "Flow-2", "rf": "R+F-2"}
    assert set(ck.encoders) == set(C.Stream) and len(ck.sha256) == 64


def test_checkpoint_labels_of_a_joint_phase(tmp_path, save_ckpt):
    """GOCA trains both encoders in one phase: both get a row, and their fusion is labelled with it."""
    p = save_ckpt(tmp_path / "joint.pt", ["joint"], overrides=["method.name=goca"])
    assert load_checkpoint(p).labels == {"rgb": "RGB-joint", "flow": "Flow-joint", "rf": "R+F-joint"}


def test_checkpoint_truncated(tmp_path, save_ckpt):
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"x\.pt is truncated or corrupt"):
        load_checkpoint(p)


def test_checkpoint_other_backbone(tmp_path, save_ckpt):
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    state = torch.load(p, weights_only=True)
    state["config"]["model"]["tiny_width"] = 8  # the config claims another architecture than the weights
    ckpt.save(p, {k: v for k, v in state.items() if k != "format_version"})
    with pytest.raises(ckpt.CheckpointError, match=r"x\.pt does not match this model"):
        load_checkpoint(p)


def test_override_of_model_refused(tmp_path, save_ckpt):
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    with pytest.raises(C.ConfigError, match="model.backbone"):
        load_checkpoint(p, ["model.backbone=s3d"])
    assert load_checkpoint(p, ["eval.cluster.restarts=2"]).cfg.eval.cluster.restarts == 2


def test_moved_eval_keys_old_override_names_the_new_key_and_old_checkpoints_read_through_the_map(
    tmp_path, save_ckpt
):
    import warnings

    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    with pytest.raises(C.ConfigError, match=r"'eval.linear_epochs' is now 'eval.linear.epochs'"):
        load_checkpoint(p, ["eval.linear_epochs=2"])
    state = torch.load(p, weights_only=True)
    ev = state["config"]["eval"]  # as a run saved before issue 29 wrote it: flat prefixed keys
    ev["kmeans_restarts"] = ev["cluster"].pop("restarts") + 5
    ev["retrieval_crop"] = ev["retrieval"].pop("crop")
    ckpt.save(p, {k: v for k, v in state.items() if k != "format_version"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key reads as absent
        cfg = load_checkpoint(p).cfg
    assert cfg.eval.cluster.restarts == C.EvalConfig().cluster.restarts + 5
    assert cfg.eval.retrieval.crop is C.EvalConfig().retrieval.crop
