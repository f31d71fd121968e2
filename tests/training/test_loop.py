from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.server import ROOT
from tests.training.helpers import TINY, file_size_limit, truncated_jpeg
from training.config import TrainConfig
from training.data import load_splits
from training.loop import (
    Cluster,
    eval_loader,
    evaluate,
    make_optimizer,
    make_scheduler,
    read_metrics,
    train,
    train_epoch,
)
from training.model import build_model, load_checkpoint, model_from_checkpoint
from training.report import epoch_metrics


def test_evaluate_skips_unreadable_rows(tmp_path: Path, dataset: Path) -> None:
    bad = tmp_path / "bad.jpg"
    truncated_jpeg(dataset / "test" / "Acne" / "0001.jpg", bad)
    samples = [
        (dataset / "test" / "Acne" / "0000.png", 0),
        (bad, 0),
        (dataset / "test" / "Moles" / "0000.png", 2),
        (dataset / "test" / "Eczema" / "0002.jpeg", 1),
    ]
    torch.manual_seed(0)
    model = build_model("test_efficientnet", 3, drop_rate=0.0)
    model.train()
    ev = evaluate(model, eval_loader(samples, 32, batch_size=2), "cpu")
    assert model.training  # mode restored
    assert ev.skipped == 1
    assert ev.indices.tolist() == [0, 2, 3] and ev.labels.tolist() == [0, 2, 1]
    assert ev.probs.shape == ev.logits.shape == (3, 3)
    assert np.allclose(ev.probs, torch.softmax(torch.from_numpy(ev.logits), 1).numpy())
    probs, labels = ev.probs, ev.labels  # also a tuple: (probs, labels, logits, skipped, indices)
    assert probs is ev[0] and labels is ev[1]


def test_backbone_learns_slower_than_the_head() -> None:
    model = build_model("test_efficientnet", 3)
    cfg = TrainConfig(lr=0.02, backbone_lr_scale=0.1)
    groups = make_optimizer(model, cfg).param_groups
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.002, 0.02])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.get_classifier().parameters()}


class _NoBar:
    disable = True

    def update(self, n: int) -> None:
        pass


@pytest.mark.parametrize(
    ("batches", "accum_steps"),
    [
        pytest.param(5, 2, id="five-batches-in-twos"),
        pytest.param(5, 3, id="five-batches-in-threes"),
        pytest.param(4, 2, id="no-short-group"),
    ],
)
def test_each_update_takes_the_mean_gradient_of_its_batches(batches: int, accum_steps: int) -> None:
    """Gradient accumulation: every update steps on the mean loss of the batches it gathered, also the
    epoch's last one when fewer are left than --accum-steps (it was divided by --accum-steps all the same)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    n = 2 * batches
    data = torch.utils.data.TensorDataset(torch.randn(n, 4), torch.arange(n) % 3, torch.arange(n))
    loader = torch.utils.data.DataLoader(data, batch_size=2)  # (image, label, index) as training's
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # the weights stay put: gradients compare
    seen: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda *_: seen.append(net.weight.grad.clone()))  # type: ignore[union-attr]
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    cfg = TrainConfig(accum_steps=accum_steps, clip_grad=0.0)
    cpu = torch.device("cpu")
    train_epoch(
        net, loader, optimizer, None, criterion, cfg=cfg, device=cpu, amp_dtype=None, scaler=None,
        channels_last=False, cluster=Cluster(0, 1, cpu, False), bar=_NoBar(),
    )  # fmt: skip
    expected = []
    for start in range(0, batches, accum_steps):
        group = list(loader)[start : start + accum_steps]
        net.zero_grad()
        (sum(criterion(net(x), y).mean() for x, y, _ in group) / len(group)).backward()
        expected.append(net.weight.grad.clone())  # type: ignore[union-attr]
    assert len(seen) == len(expected) == math.ceil(batches / accum_steps)
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_a_distilled_arch_has_both_its_heads_in_the_head_group() -> None:
    # DeiT and LeViT distilled: get_classifier() is (head, head_dist), a tuple, not a module.
    model = build_model("deit_tiny_distilled_patch16_224", 3)
    groups = make_optimizer(model, TrainConfig()).param_groups
    heads = {id(p) for head in (model.head, model.head_dist) for p in head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == heads
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_an_epoch_diverged_when_its_weights_are_no_longer_finite_not_its_loss() -> None:
    # Under fp16 the scaler skips a step whose activations overflowed: a NaN loss, the weights as they were.
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x = torch.randn(4, 4)
    x[0, 0] = float("nan")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.arange(4) % 3, torch.arange(4))
    )
    skipped = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # steps none of the net's weights
    cpu = torch.device("cpu")
    run = {
        "scheduler": None, "criterion": torch.nn.CrossEntropyLoss(reduction="none"),
        "cfg": TrainConfig(accum_steps=1, clip_grad=0.0), "device": cpu, "amp_dtype": None, "scaler": None,
        "channels_last": False, "cluster": Cluster(0, 1, cpu, False), "bar": _NoBar(),
    }  # fmt: skip
    stats = train_epoch(net, loader, skipped, **run)
    assert math.isnan(stats["loss"]) and not stats["diverged"]
    net.register_buffer("running_mean", torch.zeros(3))  # as BatchNorm's: a NaN there stays for good
    with torch.no_grad():
        net.running_mean[0] = float("nan")
    assert train_epoch(net, loader, skipped, **run)["diverged"]
    net.running_mean.zero_()
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    assert train_epoch(net, loader, skipped, **run)["diverged"]


def test_cosine_warms_up_then_decays() -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = TrainConfig(scheduler="cosine", lr=1.0, epochs=4, warmup_epochs=1, min_lr=0.01)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.01, abs=0.01)


def test_a_warm_up_longer_than_the_run_warms_up_the_whole_run() -> None:
    # 1e308 epochs times the steps is infinity: round() failed with a traceback before the first step.
    cfg = TrainConfig(scheduler="cosine", epochs=2, warmup_epochs=1e308)
    assert _rates_after(cfg, 5) == _rates_after(dataclasses.replace(cfg, warmup_epochs=2), 5)


def _rates_after(cfg: TrainConfig, steps_per_epoch: int) -> list[list[float]]:
    """Each group's rate after every step of a whole cosine schedule: [[backbone, head], ...]."""
    optimizer = make_optimizer(build_model("test_efficientnet", 3), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    rates = []
    for _ in range(cfg.epochs * steps_per_epoch):
        optimizer.step()
        scheduler.step()
        rates.append([group["lr"] for group in optimizer.param_groups])
    return rates


def test_cosine_ends_both_groups_at_min_lr() -> None:
    cfg = TrainConfig(
        scheduler="cosine", lr=0.01, backbone_lr_scale=0.1, epochs=2, warmup_epochs=0.4, min_lr=1e-4
    )
    rates = _rates_after(cfg, steps_per_epoch=5)
    assert rates[-1] == pytest.approx([1e-4, 1e-4])
    assert min(r[0] for r in rates) == pytest.approx(1e-4)  # the backbone never goes below it


def test_cosine_keeps_a_group_that_starts_below_min_lr_at_its_rate() -> None:
    cfg = TrainConfig(
        scheduler="cosine", lr=1e-3, backbone_lr_scale=0.01, epochs=2, warmup_epochs=0.4, min_lr=1e-4
    )
    rates = _rates_after(cfg, steps_per_epoch=5)
    # Warmed up from half of it (2 warm-up steps), then constant: never raised to min_lr.
    assert [r[0] for r in rates] == pytest.approx([1e-5] * 10)
    assert rates[-1][1] == pytest.approx(1e-4)


def test_mixed_precision_and_channels_last_paths_run(tmp_path: Path, dataset: Path) -> None:
    """The GPU-oriented branches (autocast, channels_last, cosine per step) on a CPU with bf16."""
    options = {**TINY, "amp": "bf16", "channels_last": True, "scheduler": "cosine", "accum_steps": 3}
    run = train(**options, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    row = read_metrics(run / "metrics.csv")[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])


def _torchrun(dataset: Path, out: Path, epochs: int) -> subprocess.CompletedProcess[str]:
    """skin-train in two CPU processes (gloo) on the tiny model."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "training", "--data", str(dataset), "--out", str(out), "--epochs", str(epochs)]
    for key in ("arch", "img_size", "batch_size", "workers", "lr", "backbone_lr_scale", "device"):
        command += [f"--{key.replace('_', '-')}", str(TINY[key])]
    command += ["--no-pretrained", "--no-plots"]
    # TMPDIR: torchrun leaves a torchelastic_* folder there on every run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(out.parent)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


_GLOO_THREADS = """
import os, sys
import torch
import torch.distributed as dist
from training.cluster import setup_cluster

cluster = setup_cluster("cpu")
net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
net(torch.ones(3, 4)).sum().backward()
del net
dist.destroy_process_group()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(f"rank {cluster.rank}: {sum('gloo' in n for n in names)} gloo threads", flush=True)
"""


@pytest.mark.slow
def test_under_torchrun_the_process_group_ends_with_the_run(tmp_path: Path) -> None:
    # DDP imports torch._dynamo, which, imported after the group existed, kept it alive past
    # destroy_process_group(): gloo's threads lived on into interpreter exit, the likely cause of a finished
    # run's rare abort there ("terminate called without an active exception", torchrun exit 1).
    script = tmp_path / "ddp.py"
    script.write_text(_GLOO_THREADS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command.append(str(script))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # the two ranks share torchrun's stdout: their lines may interleave
    threads = sorted(re.findall(r"rank (\d): (\d+) gloo threads", done.stdout))
    assert threads == [("0", "0"), ("1", "0")], done.stdout


@pytest.mark.slow
def test_torchrun_two_processes_write_one_set_of_outputs(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "run"
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "val").mkdir()  # a folder the scan warns it does not read
    done = _torchrun(data, out, epochs=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device cpu x2" in done.stdout
    assert done.stderr.count("not reading") == 1  # every rank scans; rank 0 alone says what it found
    assert done.stdout.count("test: accuracy") == 1  # only rank 0 speaks and writes
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.csv",
        "report.json",
    ]
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2]
    # Validation metrics cover both ranks' shards: one process over the whole split gives the same numbers.
    best = load_checkpoint(out / "best.pt")
    splits = load_splits(data)
    ev = evaluate(model_from_checkpoint(best), eval_loader(splits.val, 64), "cpu")
    again = epoch_metrics(ev.logits, ev.labels)
    assert (again["accuracy"], again["f1"]) == (best["metrics"]["accuracy"], best["metrics"]["f1"])
    assert again["loss"] == pytest.approx(best["metrics"]["loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "failure", [pytest.param("locked", id="folder-being-written"), pytest.param("full", id="full-disk")]
)
def test_under_torchrun_what_rank_0_alone_fails_at_is_its_one_line(
    tmp_path: Path, dataset: Path, failure: str
) -> None:
    # Rank 0 alone takes the folder's lock and writes the files: the other rank used to die in its next
    # collective, with gloo's "Connection closed by peer" traceback under rank 0's line.
    out = tmp_path / "run"
    out.mkdir()
    if failure == "locked":
        held = os.open(out, os.O_RDONLY)  # as another skin-train on this folder holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            done = _torchrun(dataset, out, epochs=1)
        finally:
            os.close(held)
        line = f"another skin-train is writing to {out}; wait for it to end, or pass another --out"
    else:
        with file_size_limit(100_000):  # config.yaml fits, the first best.pt does not
            done = _torchrun(dataset, out, epochs=1)
        line = f"File too large: {out / 'best.pt'}"
    assert done.returncode != 0
    ours = [text for text in done.stderr.splitlines() if "skin-train" in text]
    assert ours == [f"skin-train: error: {line}"]
    assert "[rank" not in done.stderr and "Connection closed" not in done.stderr


@pytest.mark.slow
def test_under_torchrun_an_os_error_every_rank_meets_is_one_line(tmp_path: Path, dataset: Path) -> None:
    # Every rank checks --out before training: a name too long for the file system failed on each, and each
    # printed the same line.
    out = tmp_path / ("x" * 300) / "run"
    done = _torchrun(dataset, out, epochs=1)
    assert done.returncode != 0
    ours = [text for text in done.stderr.splitlines() if "skin-train" in text]
    assert ours == [f"skin-train: error: File name too long: {out}"]


# A DataLoader worker whose handover of a batch's tensors fails because the run stopped mid-handover:
# multiprocessing's resource sharer reports it through sys.excepthook, from its own thread.
_HUNG_UP_WORKER = """
import os, sys, threading
from multiprocessing import connection, current_process, resource_sharer
from training.loop import worker_own_group

worker_own_group(0)
reported, hook = threading.Event(), sys.excepthook
def spy(*args):
    hook(*args)
    reported.set()
sys.excepthook = spy
def send(conn, pid):
    raise BrokenPipeError(32, "Broken pipe")
address, key = resource_sharer._resource_sharer.register(send, lambda: None)
with connection.Client(address, authkey=current_process().authkey) as client:
    client.send((key, os.getpid()))
    try:
        client.recv()
    except EOFError:  # the sharer closed the connection: its report follows, in its own thread
        pass
if not reported.wait(30):  # not a sleep: under load a report still to come would print nothing yet
    sys.exit("the sharer never reported")
reported.clear()
sys.excepthook(ValueError, ValueError("anything else"), None)
"""


def test_a_worker_stopped_mid_handover_prints_no_traceback() -> None:
    # Ctrl-C or SIGTERM to a run with --workers: a traceback ended up under the run's one line.
    done = subprocess.run(
        [sys.executable, "-c", _HUNG_UP_WORKER], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "ValueError: anything else\n"


@pytest.mark.slow
def test_efficientnet_b3_at_300px_builds_and_takes_a_step(tmp_path: Path) -> None:
    from training.data import TrainDataset
    from training.model import IMAGENET_MEAN, IMAGENET_STD
    from training.synthetic import generate

    torch.manual_seed(0)
    model = build_model("efficientnet_b3", 22)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 10.7
    root = generate(tmp_path / "data", train_per_class=1, test_per_class=1, size_range=(200, 260))
    samples = load_splits(root).train[:2]
    cfg = TrainConfig(data=str(root), img_size=300, batch_size=2, accum_steps=1)
    dataset = TrainDataset(samples, 300, IMAGENET_MEAN, IMAGENET_STD, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=[(0, 0, 0), (0, 1, 1)])
    optimizer = make_optimizer(model, cfg)
    before = model.get_classifier().weight.detach().clone()
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1, reduction="none")

    class Bar:
        disable = True

        def update(self, n: int) -> None:
            pass

    stats = train_epoch(
        model,
        loader,
        optimizer,
        None,
        criterion,
        cfg=cfg,
        device=torch.device("cpu"),
        amp_dtype=None,
        scaler=None,
        channels_last=False,
        cluster=Cluster(0, 1, torch.device("cpu"), False),
        bar=Bar(),
    )
    assert math.isfinite(stats["loss"]) and stats["bad"] == []
    assert not torch.equal(before, model.get_classifier().weight)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 300, 300)).shape == (1, 22)


def test_early_stop_and_mlflow_logging(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No better macro-F1 for ``early_stop`` epochs ends the run; MLflow (a stand-in here) sees it all."""
    calls: list[tuple[str, object]] = []
    fake = types.ModuleType("mlflow")
    fake.set_experiment = lambda name: calls.append(("experiment", name))  # type: ignore[attr-defined]
    fake.start_run = lambda run_name: calls.append(("start", run_name))  # type: ignore[attr-defined]
    fake.log_params = lambda params: calls.append(("params", params))  # type: ignore[attr-defined]
    fake.log_metrics = lambda metrics, step: calls.append(("metrics", step))  # type: ignore[attr-defined]
    fake.log_artifact = lambda path: calls.append(("artifact", Path(path).name))  # type: ignore[attr-defined]
    fake.end_run = lambda status: calls.append(("end", status))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    # An lr this small hardly moves the weights (only BatchNorm statistics): the macro-F1 soon stalls.
    options = {**TINY, "lr": 1e-12, "early_stop": 1, "mlflow": True, "mlflow_experiment": "exp"}
    run = train(**options, data=str(dataset), out=str(tmp_path / "run"), epochs=10)
    f1 = [r["val_f1"] for r in read_metrics(run / "metrics.csv")]
    assert len(f1) < 10 and f1[-1] <= max(f1[:-1])
    assert all(a < b for a, b in zip(f1[:-2], f1[1:-1], strict=True))  # every earlier epoch improved
    assert load_checkpoint(run / "best.pt")["epoch"] == len(f1) - 1
    assert calls[:2] == [("experiment", "exp"), ("start", "run")]
    assert [step for kind, step in calls if kind == "metrics"] == list(range(1, len(f1) + 1))
    assert ("artifact", "report.json") in calls and ("artifact", "metrics.csv") in calls
    assert calls[-1] == ("end", "FINISHED")


def _failing_mlflow(monkeypatch: pytest.MonkeyPatch, fails: str) -> list[str]:
    """An MLflow stand-in whose ``fails`` call raises, as one whose tracking server is down does."""
    calls: list[str] = []

    def call(name: str) -> Any:
        def method(*args: object, **kwargs: object) -> None:
            calls.append(f"end_run {args[0]}" if name == "end_run" else name)
            if name == fails:
                raise RuntimeError("API request to http://mlflow:5000 failed\nMax retries exceeded")

        return method

    fake = types.ModuleType("mlflow")
    for name in ("set_experiment", "start_run", "log_params", "log_metrics", "log_artifact", "end_run"):
        setattr(fake, name, call(name))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    return calls


def test_a_tracking_server_that_cannot_start_a_run_stops_before_training(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.config import ConfigError

    calls = _failing_mlflow(monkeypatch, "set_experiment")
    line = "MLflow could not start a run: API request to http://mlflow:5000 failed"
    with pytest.raises(ConfigError, match=f"^{line}$"):
        train(**TINY, mlflow=True, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    assert not (tmp_path / "run" / "last.pt").exists()
    assert calls == ["set_experiment", "end_run FAILED"]


def test_a_tracking_server_that_fails_mid_run_ends_the_logging_not_the_run(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _failing_mlflow(monkeypatch, "log_metrics")
    run = train(**TINY, mlflow=True, data=str(dataset), out=str(tmp_path / "run"), epochs=2)
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2]
    assert (run / "report.json").is_file()
    out = capsys.readouterr().out
    warning = "warning: MLflow logging stopped (API request to http://mlflow:5000 failed); the run goes on"
    assert out.count(warning) == 1
    # Then left alone, but for closing the run as the training ended: left open, MLflow's exit hook would end
    # it as FINISHED even after a failed training.
    assert calls == ["set_experiment", "start_run", "log_params", "log_metrics", "end_run FINISHED"]


def test_one_image_per_step_at_a_small_size_is_refused_before_training(dataset: Path) -> None:
    # Two ranks sharing two training images get one each: BatchNorm cannot train on a 1x1 map of one image.
    from training.config import ConfigError
    from training.loop import _check_splits

    splits = load_splits(dataset, val_fraction=0.2, seed=42)
    two = type(splits)(splits.root, splits.class_names, splits.train[:2], splits.val, splits.test)
    ranks = Cluster(rank=0, world_size=2, device=torch.device("cpu"), owned=False)
    with pytest.raises(ConfigError, match="one training image per step needs --img-size above 32"):
        _check_splits(two, TrainConfig(data=str(dataset), img_size=32, batch_size=8), ranks)
    _check_splits(two, TrainConfig(data=str(dataset), img_size=64, batch_size=8), ranks)
    _check_splits(splits, TrainConfig(data=str(dataset), img_size=32, batch_size=8), ranks)


class _GroupOf(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Each item: the process group of the process that loaded it."""

    def __init__(self, samples: object, *args: object) -> None:
        self.n = 4

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return os.getpgid(0)


def test_evaluation_workers_leave_the_runs_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # A SIGTERM to the group (torchrun, kill -TERM -PGID) during the final test evaluation must reach the
    # run alone, as during training (tests/training/test_train.py sends a real one there).
    import training.loop

    monkeypatch.setattr(training.loop, "EvalDataset", _GroupOf)
    groups = [int(g) for batch in eval_loader([], 32, batch_size=1, workers=2) for g in batch]
    assert len(groups) == 4 and os.getpgid(0) not in groups
