"""Doc tables generated from the demo records (vicc_fast/bench/report.py) and the record writer's parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vicc_fast.bench import demo, report

ROWS = ("RGB-1", "Flow-1", "R+F-1", "RGB-2", "Flow-2", "R+F-2")


def fake_record(method: str, seed: int, r1: dict[str, float]) -> dict:
    rows = {
        lb: {"R@1": r1.get(lb, 50.0), "R@5": 80.0, "R@10": 90.0, "R@20": 95.0, "linear": 30.0} for lb in ROWS
    }
    phases = {
        "rgb1": {"report": "RGB-1", "rows": {"rgb": "RGB-1"}, "metrics": {}},
        "flow1": {"report": "Flow-1", "rows": {"flow": "Flow-1"}, "metrics": {}},
        "cross_flow_c2": {"report": "RGB-2", "rows": {"rgb": "RGB-2", "flow": "Flow-2"}, "metrics": {}},
    }
    for ph in phases.values():
        for stream, label in ph["rows"].items():
            ph["metrics"].update({f"{stream}/{c}": v for c, v in rows[label].items() if c.startswith("R@")})
        if len(ph["rows"]) == 2:
            ph["metrics"].update({f"rf_sum/{c}": v for c, v in rows["R+F-2"].items() if c.startswith("R@")})
    t = {"wall_s": 600.0, "load_before": 0.1, "load_after": 2.0}
    return {"record": "demo_run", "method": method, "seed": seed, "rows": rows,
            "engine_results": {"phases": phases},
            "timing": {"commands": ["x"], "train": t, "linear": dict(t, wall_s=60.0)},
            "env": {"git_commit": "abcdef0123", "cpu_count": 2, "gpu": None}, "eval_results": {}}  # fmt: skip


def write(folder: Path, rec: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / demo.record_name(rec["method"], rec["seed"])).write_text(json.dumps(rec))


def test_committed_tables_equal_what_the_records_generate() -> None:
    """README.md and configs/compare/README.md blocks are generated from benchmarks/results/{demo,compare}."""
    for doc, text in report.generated().items():
        assert (report.ROOT / doc).read_text() == text, (
            f"{doc} is out of date with its records: python -m vicc_fast.bench report --write"
        )


def test_demo_table_is_mean_and_spread_over_seeds_with_each_seeds_ratio(tmp_path) -> None:
    for seed, (a, b) in enumerate([(10.0, 30.0), (12.0, 42.0), (14.0, 42.0)]):
        write(tmp_path, fake_record("vicc", seed, {"RGB-1": a, "RGB-2": b}))
    block = report.demo_block(report.load_records(tmp_path))
    rgb2 = next(ln for ln in block.splitlines() if ln.startswith("| RGB-2 "))
    assert "38.0 ± 6.9" in rgb2 and "| 30.00 | 42.00 | 42.00 |" in rgb2
    assert "3.00x, 3.50x, 3.00x" in block
    assert "10.0 min (load 0.1 -> 2.0)" in block


def test_comparison_averages_each_methods_seeds_and_names_the_odd_ones(tmp_path) -> None:
    """A method re-measured at fewer seeds keeps its own (named in the footer); the others keep all of theirs."""
    write(tmp_path, fake_record("vicc", 0, {"RGB-2": 40.0}))
    write(tmp_path, fake_record("vicc", 1, {"RGB-2": 20.0}))
    write(tmp_path, fake_record("goca", 0, {"RGB-2": 10.0}))
    block = report.compare_block(report.load_records(tmp_path), stage2_only=True)
    assert "| ViCC | RGB-2 | 30.0 ± 14.1 |" in block and "over seeds 0, 1 (GOCA: 0);" in block
    assert "RGB-1" not in block and "| GOCA | RGB-2 | 10.0 |" in block
    full = report.compare_block(report.load_records(tmp_path), stage2_only=False)
    assert "| ViCC | RGB-1 |" in full


def test_render_replaces_only_the_block_and_names_a_missing_marker() -> None:
    doc = "a\n<!-- t:begin (cmd) -->\nold\n<!-- t:end -->\nb\n"
    assert report.render(doc, "t", "new") == "a\n<!-- t:begin (cmd) -->\n\nnew\n\n<!-- t:end -->\nb\n"
    with pytest.raises(ValueError, match="README.md: no '<!-- u:begin"):
        report.render(doc, "u", "x", "README.md")


def test_a_foreign_json_in_the_records_folder_is_an_error_naming_it(tmp_path) -> None:
    (tmp_path / "vicc_seed0.json").write_text('{"benchmark": "loader"}')
    with pytest.raises(ValueError, match="vicc_seed0.json: not a demo_run record"):
        report.load_records(tmp_path)


def test_weights_digest_sees_one_changed_value_and_ignores_key_order(tmp_path) -> None:
    a = {"method": {"w": torch.zeros(3), "b": torch.ones(2)}, "epoch": 1}
    b = {"method": {"b": torch.ones(2), "w": torch.zeros(3)}, "epoch": 2}
    for name, state in (("a", a), ("b", b)):
        torch.save(state, tmp_path / f"{name}.pt")
    assert demo.weights_digest(tmp_path / "a.pt") == demo.weights_digest(tmp_path / "b.pt")
    b["method"]["w"][1] = 1e-30
    torch.save(b, tmp_path / "b.pt")
    assert demo.weights_digest(tmp_path / "a.pt") != demo.weights_digest(tmp_path / "b.pt")


def test_commands_are_the_readmes() -> None:
    run = Path("runs/x")
    assert demo.train_command("vicc", 1, run) == [
        "torchrun", "--standalone", "--nproc_per_node=1", "-m", "vicc_fast.train",
        "train.seed=1", "train.out_dir=runs/x",
    ]  # fmt: skip
    cmd = demo.train_command("goca", 0, run)
    assert cmd[5:9] == ["--config", "configs/synthetic_demo.yaml", "--config", "configs/compare/goca.yaml"]
    for m in demo.METHODS[1:]:
        assert (report.ROOT / f"configs/compare/{m}.yaml").is_file()


def test_collect_records_a_finished_run_folder_and_names_an_unfinished_one(tmp_path) -> None:
    """The record of one run folder: its rows (engine + evaluation), config, a digest per phase, and timing."""
    rec = fake_record("vicc", 3, {"RGB-2": 40.0})
    run = tmp_path / "vicc_seed3"
    with pytest.raises(FileNotFoundError, match="vicc_seed3/results.json is missing"):
        demo.collect(run, "vicc", 3, {})
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(rec["engine_results"]))
    (run / "config.yaml").write_text("train:\n  seed: 3\n")
    for i, ph in enumerate(rec["engine_results"]["phases"]):
        torch.save({"method": {"w": torch.full((2,), float(i))}}, run / "checkpoints" / f"{ph}.pt")
    out = demo.collect(run, "vicc", 3, rec["timing"])
    assert out["record"] == "demo_run" and (out["method"], out["seed"]) == ("vicc", 3)
    assert out["config"] == {"train": {"seed": 3}} and out["timing"] == rec["timing"]
    assert out["rows"]["RGB-2"]["R@1"] == 40.0 and out["eval_results"] is None
    digests = out["weights_sha256"]
    assert list(digests) == ["rgb1", "flow1", "cross_flow_c2"] and len(set(digests.values())) == 3
    # the record reads back as a record
    write(tmp_path / "recs", out)
    assert report.load_records(tmp_path / "recs")[0]["rows"]["RGB-2"]["R@1"] == 40.0


def test_demo_and_comparison_blocks_read_their_own_folders(tmp_path) -> None:
    write(tmp_path / "demo", fake_record("vicc", 0, {"RGB-1": 10.0, "RGB-2": 40.0}))
    write(tmp_path / "cmp", fake_record("vicc", 0, {"RGB-2": 20.0}))
    write(tmp_path / "cmp", fake_record("goca", 0, {"RGB-2": 30.0}))
    found = report.blocks(tmp_path / "demo", tmp_path / "cmp", root=tmp_path)
    assert "4.00x" in found[("README.md", "demo-table")]
    cmp = found[("README.md", "compare-table")]
    assert "| ViCC | RGB-2 | 20.0 |" in cmp and "| GOCA | RGB-2 | 30.0 |" in cmp
    assert "Code at abcdef0" in cmp


def _loader_run(streams: list[str], dali: float, jl: float) -> dict:
    def backend(sps: float) -> dict:
        return {
            "samples_per_s": sps,
            "all_samples_per_s": [sps - 1, sps, sps + 1],
            "cpu_s_per_sample": 2 / sps,
        }

    return {
        "benchmark": "loader",
        "env": {"cpu_count": 2, "gpu": None, "git_commit": "abcdef0123"},
        "result": {
            "streams": streams,
            "load_avg_1min_at_start": 0.5,
            "dali": backend(dali),
            "torch": backend(5.0),
            "jpeg_lmdb": backend(jl),
            "ratio_dali_over_jpeg_lmdb": dali / jl,
            "jpeg_lmdb_build": {
                "lmdb_bytes_per_video": 300e3,
                "shard_bytes_per_video": 100e3,
                "jpeg_quality": 90,
            },
        },
    }


def test_loader_table_takes_the_last_run_of_each_stream_set(tmp_path) -> None:
    runs = [_loader_run(["rgb", "flow"], 10, 8), _loader_run(["rgb"], 20, 7), _loader_run(["rgb"], 21, 14)]
    path = tmp_path / "loader.json"
    path.write_text(json.dumps(runs))
    table = report.loader_block(report.load_bench(path))
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| two-stream", "| rgb only"]
    assert "**21.00** (20.00, 21.00, 22.00)" in rows[1] and "1.50x" in rows[1]  # the later RGB-only run
    assert "1.25x" in rows[0] and "300 kB" in table and "3.0x" in table
    assert report.load_bench(tmp_path / "missing.json") == []
    path.write_text("{}")
    with pytest.raises(ValueError, match="loader.json"):
        report.load_bench(path)


def test_supervised_line_comes_from_the_last_supervised_run(tmp_path) -> None:
    def run(acc: float) -> dict:
        res = {"accuracy": acc, "knn_r1": 0.8, "chance": 0.125, "num_train": 256, "num_test": 64,
               "total_seconds": 600.0, "settings": {"clip_len": 16, "size": 64, "epochs": 25},
               "static_control": {"accuracy": 0.14, "knn_r1": 0.12}}  # fmt: skip
        return {"benchmark": "supervised", "env": {"cpu_count": 2, "gpu": None}, "result": res}

    line = report.supervised_block([run(0.5), run(0.9)])
    assert "accuracy 0.90" in line and "0.14 / 0.12 from a single frame" in line and "10.0 min" in line
    assert "no record yet" in report.supervised_block([])


def test_jitter_cost_comes_from_the_last_variants_run(tmp_path) -> None:
    def run(commit: str, ratio: float) -> dict:
        res = {
            "streams": ["rgb", "flow"],
            "dali/released": {"cpu_s_per_sample": 0.107, "samples_per_s": 17.0 * ratio / 0.74},
            "dali/affine": {"cpu_s_per_sample": 0.082, "samples_per_s": 23.0},
            "ratio_dali_released_over_affine": ratio,
            "ratio_torch_released_over_affine": 0.9,
        }
        return {
            "benchmark": "loader",
            "env": {"cpu_count": 2, "gpu": None, "git_commit": commit},
            "result": res,
        }

    runs = [run("aaaaaaa1", 0.5), {"benchmark": "loader", "env": {}, "result": {}}, run("bbbbbbb2", 0.8)]
    text = report.jitter_cost_block(runs)
    assert "0.80x the samples/s" in text and "82 to 107 CPU ms" in text and "bbbbbbb" in text
    assert "first entry, code at aaaaaaa: the first implementation" in text and "0.50x" in text
    assert "1.25x the DALI samples/s" in report.jitter_trade_block(runs)
    assert "no jitter-cost record" in report.jitter_cost_block([])


def test_flow_extraction_estimate_comes_from_the_last_320x240_speed_run() -> None:
    from vicc_fast.bench import report_flow

    def run(size, opencv, ours):
        methods = {"tvl1": {"pairs_per_s": opencv}, "tvl1-torch": {"pairs_per_s": ours}}
        env = {"time": "2026-12-07T05:00:00", "cpu_model": "X", "cpu_simd": "avx2", "git_commit": "abc1234"}
        return {"env": env, "result": {"size": size, "threads": 1, "methods": methods}}

    line = report_flow.extraction_block(
        [run([240, 320], 1.0, 1.0), run([128, 171], 9.0, 9.0), run([240, 320], 2.0, 5.0)]
    )
    # 2.5 million pairs at 5 and 2 pairs/s per core
    assert "about 139 core-hours with tvl1-torch and 347 with OpenCV" in line and "abc1234" in line
    assert "no 320x240 speed record" in report_flow.extraction_block([run([128, 171], 9.0, 9.0)])


def test_k400_cost_block_is_computed_from_the_records() -> None:
    """Core-hours = K400 pairs / measured pairs/s; the newest current-code run per size; GPU marked not measured."""

    def flow(time: str, rate: float, note: bool = False) -> dict:
        methods = {m: {"pairs_per_s": rate * k} for m, k in (("tvl1", 1), ("tvl1-torch", 2), ("dis", 100))}
        env = {"time": time, "git_commit": "abc1234", "cpu_count": 2, "gpu": None} | (
            {"note": "old"} if note else {}
        )
        return {
            "benchmark": "flow",
            "env": env,
            "result": {"threads": 1, "size": [128, 171], "methods": methods},
        }

    row = {"flow": "tvl1", "frames_per_video": 50, "shard_bytes_per_video": 100_000,
           "rgb_plus_flow_bytes_per_video": 90_000, "build": {"frame_pairs_per_wall_s": 9.0}}  # fmt: skip
    build = {"benchmark": "build", "env": {"git_commit": "def5678", "cpu_count": 2, "gpu": None},
             "result": {"rows": [row], "source": {"size": [128, 171]}, "workers": 2}}  # fmt: skip
    runs = [flow("2026-01-01", 5.0), flow("2026-02-01", 10.0), flow("2026-03-01", 99.0, note=True)]
    block = report.build_cost_block({"build": [build], "flow": runs, "slurm_build": []})
    pairs = 260_000 * 249
    assert (
        f"| tvl1 (OpenCV, CPU) | 128 x 171 | 10 | {pairs / 10 / 3600:,.0f} |" in block
    )  # the newest un-noted run
    assert f"| tvl1-torch (PyTorch, CPU) | 128 x 171 | 20 | {pairs / 20 / 3600:,.0f} |" in block
    assert "| tvl1-torch (GPU) | - | not measured yet |" in block
    assert f"**{pairs / 86_400 / 8:.0f} frame pairs/s per GPU**" in block
    assert f"**{2000 * 250 * 260_000 / 1e9:.0f} GB** for K400" in block  # 2 kB per frame x 250 frames x clips


def test_real_data_times_name_machine_and_record_and_say_what_is_unmeasured() -> None:
    flow = {
        "benchmark": "flow",
        "env": {"time": "2026-12-07T00:00:00", "cpu_model": "AMD EPYC", "cpu_simd": "avx2", "git_commit": "c0ffee12"},
        "result": {"size": [240, 320], "threads": 2,
                   "methods": {"tvl1": {"pairs_per_s": 2.0}, "tvl1-torch": {"pairs_per_s": 5.0}}},
    }  # fmt: skip
    gpu = {
        "amp": [{"amp": "fp16", "steps": 200, "clips_per_s": 1000.0, "data_wait_pct": 2.0}],
        "validate": [{"env": {"gpu": "NVIDIA H100", "time": "2026-12-08T00:00:00", "git_commit": "dirty"}}],
        "run": [{"code_commit": "abcdef0123"}],
    }
    text = report.real_data_block({"flow": [flow], "gpu_train": gpu})
    build, train, rest = text.splitlines()[2:]
    # 2.5 M pairs at 1 pair/s per core (2 pairs/s on 2 threads) = 694 core-hours; tvl1-torch 2.5 pairs/s per core
    assert "about 278 core-hours" in build and "694 with OpenCV" in build and "AMD EPYC (avx2)" in build
    assert "`benchmarks/results/flow_torch_cpu.json`" in build and "c0ffee1" in build
    # 1000 clips/s = 500 videos/s: 9,537 videos in 19 s, 300 epochs in 1.6 h
    assert "500 videos/s" in train and "takes 19 s" in train and "1.6 h" in train
    assert "NVIDIA H100" in train and "code abcdef0" in train and "amp_fp16.json" in train
    assert "not measured yet" in rest
    empty = report.real_data_block({"flow": [], "gpu_train": {"amp": [], "validate": [], "run": []}})
    assert empty.count("no record yet") == 2
