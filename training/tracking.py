"""Optional MLflow logging of a run (``--mlflow``; mlflow is not a dependency)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import ConfigError, TrainConfig, first_line


class MlflowTracker:
    """Optional MLflow logging (rank 0 only): parameters, per-epoch metrics, the run's files at the end.
    A tracking server that cannot start a run stops skin-train before it trains, in one line; one that fails
    later (down, full) ends the logging with a warning, never the run: its files have everything."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, say: Callable[[str], None]) -> None:
        import mlflow

        self.mlflow = mlflow
        self.say = say
        self.on = True
        try:
            mlflow.set_experiment(cfg.mlflow_experiment)
            mlflow.start_run(run_name=run_dir.name)
            mlflow.log_params({k: str(v)[:500] for k, v in cfg.as_dict().items()})
        except Exception as exc:
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
            raise ConfigError(f"MLflow could not start a run: {first_line(exc)}") from None

    def log_epoch(self, row: dict[str, float]) -> None:
        step = int(row["epoch"])
        self._call(self.mlflow.log_metrics, {k: float(v) for k, v in row.items() if k != "epoch"}, step=step)

    def finish(self, run_dir: Path) -> None:
        for path in sorted(run_dir.iterdir()):
            if path.suffix in (".json", ".csv", ".yaml", ".png"):
                self._call(self.mlflow.log_artifact, str(path))

    def close(self, status: str) -> None:
        """status: MLflow's FINISHED, FAILED or KILLED (stopped by Ctrl-C or SIGTERM). Tried even once the
        logging has stopped (quietly then): a run left open is ended at exit by MLflow's hook, as FINISHED."""
        if self.on:
            self._call(self.mlflow.end_run, status)
            return
        with contextlib.suppress(Exception):
            self.mlflow.end_run(status)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not self.on:
            return
        try:
            method(*args, **kwargs)
        except Exception as exc:
            self.on = False
            why = first_line(exc)
            self.say(f"warning: MLflow logging stopped ({why}); the run goes on, its files have it all")
