import subprocess
import sys

import pytest

from vicc_fast import config as C
from vicc_fast.train import main


def test_help_lists_every_key():
    out = subprocess.run(
        [sys.executable, "-m", "vicc_fast.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "torchrun" in out and "--config FILE" in out
    for key, _default, help_ in C.describe():
        assert f"  {key} " in out, key
        assert help_ and help_ in out, key


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train.batchsize=3"], "train.batchsize"),
        (["train.batch_size=abc"], "train.batch_size"),
        (["model.backbone=vit"], "model.backbone"),
        (["optim.momentum=2"], "optim.momentum"),
        (["train.resume=/no/such.pt"], "train.resume"),
        (["--config", "/no/such.yaml"], "config file not found"),
    ],
)
def test_bad_config_fails_before_any_work(args, needle, capsys, tmp_path):
    rc = main([*args, f"train.out_dir={tmp_path}/run", f"data.root={tmp_path}/data"])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_not_key_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trainbatch"])
    assert e.value.code == 2 and "key=value" in capsys.readouterr().err


def test_signals_request_a_checkpointed_stop(capsys):
    import os
    import signal

    from vicc_fast.train import install_stop_handlers

    class Fake:
        stop_requested = False

        def request_stop(self):
            self.stop_requested = True

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            fake = Fake()
            install_stop_handlers(fake)
            os.kill(os.getpid(), sig)
            assert fake.stop_requested, sig
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert "Ctrl-C again aborts" in capsys.readouterr().err
