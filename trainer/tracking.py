"""Experiment tracking with Weights & Biases: the pipeline's products logged as artifacts when report_to has wandb.

transformers' WandbCallback logs the losses and the TrainingArguments into whatever run is active, so the run is
started here, before the Trainer, and gets what the Trainer never sees:

  before training   <name>-raw-tweets    dataset   raw/<user>.jsonl of each trained user, as fetched
                    <name>-training-set  dataset   clean/<user>.jsonl, stats.json, train.jsonl, validation.jsonl
  after training    <name>-model         model     runs/<name>/model (the fine-tuned Hugging Face folder)
  after export      <name>-onnx          model     the exported ONNX model folder
  after eval        the evaluation's numbers in the run summary (eval/...)
  while training    with --sample-every N, the sampled tweets as a table ("samples": step, voice, tweet)

Artifact files are copied into wandb's staging folder when logged, so an offline run (WANDB_MODE=offline) can be
synced later (`wandb sync`) even after the work folder has changed. Without wandb in report_to every method does
nothing and wandb is never imported. Under torchrun only the first process (RANK unset or 0) logs.
Nothing from the environment (X_BEARER_TOKEN) goes in: the config is the TrainConfig, the files are tweets and models.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError

from tweetgen.trainer.train.config import report_targets

log = logging.getLogger(__name__)


class Tracker:
    """Logs the pipeline's products to a W&B run; without a run (tracking off, or not the first process) a no-op."""

    def __init__(self, run: Any = None, *, name: str = "", owns_run: bool = False) -> None:
        self._run = run
        self._prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", name) or "tweetgen"  # artifact names allow only these
        self._owns_run = owns_run

    @classmethod
    def start(cls, report_to: str, *, name: str, config: dict[str, Any], job_type: str = "tweetgen-train") -> Tracker:
        """Start the W&B run when `report_to` names wandb (or join the caller's active run); else a no-op Tracker.

        Raises:
            TweetgenError: report_to names an unknown tracker, wandb is not installed, or wandb cannot start a run.
        """
        if "wandb" not in report_targets(report_to):
            return cls()
        try:
            import wandb
        except ImportError:
            raise TweetgenError("report_to wandb needs the wandb package: pip install wandb "
                                "(or drop --report-to wandb)") from None
        if not _first_process():
            return cls()
        if wandb.run is not None:  # started by the caller (a notebook): log into it and leave it open
            return cls(wandb.run, name=name)
        try:
            run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tweetgen"), name=name, job_type=job_type,
                             config=config)
        except wandb.errors.Error as e:
            raise TweetgenError(f"wandb could not start a run: {e}; log in with `wandb login`, or track without a "
                                "network with WANDB_MODE=offline and `wandb sync` later") from None
        return cls(run, name=name, owns_run=True)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        self.finish(failed=error is not None)

    @property
    def active(self) -> bool:
        return self._run is not None

    def log_raw(self, files: dict[str, Path]) -> None:
        """The users' cached raw tweets (name in the artifact -> file), as the "<name>-raw-tweets" dataset artifact."""
        if not self.active:
            return
        files = {name: path for name, path in files.items() if path.is_file()}
        self._log("raw-tweets", "dataset", files, metadata={"users": sorted(p.stem for p in files.values())})

    def log_dataset(self, files: dict[str, Path], stats: dict[str, Any], dataset: Any = None) -> None:
        """The cleaned tweets and stats.json (`files`, name in the artifact -> file), plus each split of `dataset` (a
        DatasetDict) as `<split>.jsonl`."""
        if not self.active:
            return
        splits = dict(dataset or {})
        new_files = {f"{name}.jsonl": _jsonl(split["user"], split["text"]) for name, split in splits.items()}
        metadata = {"users": stats, **{f"{name}_tweets": len(split) for name, split in splits.items()}}
        self._log("training-set", "dataset", files, metadata=metadata, new_files=new_files)

    def log_model(self, folder: Path, *, kind: str = "model", metadata: dict[str, Any] | None = None) -> None:
        """A model folder (`runs/<name>/model`, or the exported folder with kind="onnx") as a "model" artifact."""
        if self.active:
            self._log(kind, "model", {"": Path(folder)}, metadata=_numbers(metadata or {}))

    def log_eval(self, report: dict[str, Any]) -> None:
        """The evaluation's numbers (eval.json's) in the run summary, under eval/."""
        if self.active:
            self._run.summary.update(_numbers(report, prefix="eval/"))

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        """Tweets sampled at an optimizer step ([(voice, tweet), ...]), as a "samples" table at that step."""
        if not self.active:
            return
        import wandb

        table = wandb.Table(columns=["step", "voice", "tweet"], data=[[step, v, t] for v, t in samples])
        self._run.log({"samples": table, "train/global_step": step})

    def finish(self, *, failed: bool = False) -> None:
        """End the run this Tracker started (a run the caller started stays open)."""
        if self._owns_run:
            self._run.finish(exit_code=1 if failed else 0)
        self._run, self._owns_run = None, False

    def _log(self, suffix: str, kind: str, paths: dict[str, Path], *, metadata: dict[str, Any],
             new_files: dict[str, str] | None = None) -> None:
        import wandb

        artifact = wandb.Artifact(f"{self._prefix}-{suffix}", type=kind, metadata=metadata)
        for name, path in paths.items():
            if path.is_dir():
                artifact.add_dir(str(path), name=name or None)
            else:
                artifact.add_file(str(path), name=name)
        for name, text in (new_files or {}).items():
            with artifact.new_file(name, encoding="utf-8") as f:
                f.write(text)
        self._run.log_artifact(artifact)
        log.info("wandb: logged %s artifact %s", kind, artifact.name)


def _first_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _jsonl(users: list[str], texts: list[str]) -> str:
    return "".join(json.dumps({"user": u, "text": t}, ensure_ascii=False) + "\n" for u, t in zip(users, texts))


def _numbers(obj: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict, with "a/b" keys (W&B metadata and summaries reject inf and NaN)."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = value
    return out
