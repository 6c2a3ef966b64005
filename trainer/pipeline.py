"""The stages of tweetgen-train chained: clean -> dataset -> train -> export, each reusing what the last one left.

A work folder holds everything between stages:
  raw/<user>.jsonl, clean/<user>.jsonl, stats.json   (fetch and clean)
  runs/<name>/                                       (train: checkpoints, model/, metrics.json, loss.png)
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError

from tweetgen.trainer.train.base_model import base_license
from tweetgen.trainer.train.config import TrainConfig
from tweetgen.trainer.data.dataset import DatasetOptions, build_dataset, load_clean, user_prefix

log = logging.getLogger(__name__)


def run_dir(workdir: Path, name: str) -> Path:
    return Path(workdir) / "runs" / name


def cleaned_users(workdir: Path) -> dict[str, dict[str, int]]:
    """The users of the last `clean` in this work folder, with their counts (from stats.json)."""
    path = Path(workdir) / "stats.json"
    if not path.is_file():
        raise TweetgenError(f"{workdir} has no cleaned tweets (no stats.json): give SOURCES, or run "
                            "`tweetgen-train clean SOURCES --workdir DIR` first")
    return json.loads(path.read_text(encoding="utf-8"))["users"]


def tagging(config: TrainConfig, users: list[str]) -> bool:
    """Tag tweets with their user when asked, or by default when there are several users."""
    return len(users) > 1 if config.tag_users is None else config.tag_users


def make_dataset(workdir: Path, config: TrainConfig):
    """The DatasetDict of the work folder's cleaned tweets, split and balanced as the config says."""
    users = list(cleaned_users(workdir))
    texts = load_clean(Path(workdir), users)
    options = DatasetOptions(tag_users=tagging(config, users), validation_fraction=config.validation_fraction,
                             seed=config.seed, balance=config.balance)
    return build_dataset(texts, options)


def train_stage(workdir: Path, name: str, config: TrainConfig, *, resume: bool = False, console=None, tracker=None):
    """Fine-tune on the work folder's cleaned tweets, logging data and model to `tracker`; returns the TrainResult."""
    from tweetgen.trainer.train.finetune import train

    dataset = make_dataset(workdir, config)
    log.info("training set: %d tweets, validation: %d", len(dataset["train"]), len(dataset["validation"]))
    if tracker is not None:  # what the run trains on, logged before the Trainer starts
        tracker.log_raw(workdir, cleaned_users(workdir))
        tracker.log_dataset(workdir, dataset)
    result = train(dataset, config, run_dir(workdir, name), resume=resume, console=console)
    if tracker is not None:
        tracker.log_model(result.model_dir, metadata=result.to_json())
    return result


def export_info(workdir: Path, name: str):
    """The ExportInfo of a finished run: users with their prefixes and counts, training details, perplexities."""
    from tweetgen.trainer.export.export import ExportInfo

    folder = run_dir(workdir, name)
    metrics_path, config_path = folder / "metrics.json", folder / "train_config.json"
    if not metrics_path.is_file():
        raise TweetgenError(f"{folder} holds no finished training run: run `tweetgen-train train` first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    config = TrainConfig(**json.loads(config_path.read_text(encoding="utf-8")))
    stats = cleaned_users(workdir)
    tagged = tagging(config, list(stats))
    users: dict[str, dict[str, Any]] = {}
    for user, counts in stats.items():
        users[user] = {"stats": counts, **({"prefix": user_prefix(user)} if tagged else {})}
    training = {k: v for k, v in asdict(config).items() if k not in ("report_to", "min_tweets")}
    training["tag_users"] = tagged
    training.update({k: metrics[k] for k in ("train_tokens", "wall_seconds", "tokens_per_second", "epochs", "steps")})
    evaluation = {"perplexity_before": metrics["perplexity_before"], "perplexity_after": metrics["perplexity_after"]}
    return ExportInfo(name=name, users=users, prompt_start=metrics["separator"], base_model=config.base_model,
                      training=training, evaluation=evaluation, license=base_license(config.base_model))


def validation_texts(workdir: Path, name: str, limit: int = 300) -> list[str]:
    """Held-out tweets (with their tags) for the int8-against-fp32 perplexity check."""
    config = TrainConfig(**json.loads((run_dir(workdir, name) / "train_config.json").read_text(encoding="utf-8")))
    return list(make_dataset(workdir, config)["validation"]["text"])[:limit]


def export_stage(workdir: Path, name: str, out: Path, *, int8: bool = True, fp16: bool = True,
                 fp32: bool = True, copy_index: bool = True, sampling: dict | None = None):
    """Export the finished run `runs/<name>/model` of the work folder to `out`; returns the ExportReport.

    copy_index: ship copies.bin, the index of the training tweets' 8-word windows (runtime.copies).
    sampling: sampling defaults to write over DEFAULT_SAMPLING (temperature, top_k, top_p, repetition_penalty).
    """
    from tweetgen.trainer.eval.evaluate import split_texts
    from tweetgen.trainer.export.export import export_model

    model_dir = run_dir(workdir, name) / "model"
    copy_texts = [t for ts in split_texts(workdir, name)[0].values() for t in ts] if copy_index else None
    info = export_info(workdir, name)
    info.sampling.update(sampling or {})
    report = export_model(model_dir, out, info=info, eval_texts=validation_texts(workdir, name), int8=int8,
                          fp16=fp16, fp32=fp32, copy_texts=copy_texts)
    curve = run_dir(workdir, name) / "loss.png"
    if curve.is_file():  # the training loss curve, beside the model card
        shutil.copy2(curve, Path(out) / "loss.png")
    return report
