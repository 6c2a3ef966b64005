"""The stages of tweetgen-train chained: clean -> split -> train -> export -> eval, each reusing what the last one
left in the work folder (tweetgen.trainer.workdir owns its layout). Imports point one way: the CLI calls this module,
this module calls the stages (data, train, export, eval), and the stages call the runtime."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from tweetgen.folder import read_folder
from tweetgen.trainer.data.cache import raw_path
from tweetgen.trainer.data.dataset import user_prefix
from tweetgen.trainer.train.base_model import base_license
from tweetgen.trainer.train.config import TrainConfig
from tweetgen.trainer.workdir import STATS, WorkDir

log = logging.getLogger(__name__)
VALIDATION_CHECK_TEXTS = 300  # held-out tweets on which the export compares int8 with fp32


def _as_work(workdir: str | Path | WorkDir) -> WorkDir:
    return workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)


def train_stage(workdir: str | Path | WorkDir, name: str, config: TrainConfig, *, resume: bool = False, console=None,
                tracker=None):
    """Fine-tune on the work folder's cleaned tweets, logging data and model to `tracker`; returns the TrainResult."""
    from tweetgen.trainer.train.finetune import train

    work = _as_work(workdir)
    split = work.split(config)
    dataset = split.dataset()
    log.info("training set: %d tweets, validation: %d", len(dataset["train"]), len(dataset["validation"]))
    if tracker is not None:  # what the run trains on, logged before the Trainer starts
        tracker.log_raw({f"{u}.jsonl": raw_path(work.path, u) for u in work.users})
        files = {STATS: work.path / STATS, **{f"clean/{u}.jsonl": work.path / "clean" / f"{u}.jsonl"
                                              for u in work.users}}
        tracker.log_dataset(files, work.users, dataset)
    result = train(dataset, config, work.run_dir(name), resume=resume, console=console, tracker=tracker)
    if tracker is not None:
        tracker.log_model(result.model_dir, metadata=result.to_json())
    return result


def export_info(work: WorkDir, name: str):
    """The ExportInfo of a finished run: users with their prefixes and counts, training details, perplexities."""
    from tweetgen.trainer.export.export import ExportInfo

    metrics = work.metrics(name)
    config = work.run_config(name)
    tagged = work.tagging(config)
    users = {user: {"stats": counts, **({"prefix": user_prefix(user)} if tagged else {})}
             for user, counts in work.users.items()}
    training = {k: v for k, v in asdict(config).items() if k not in ("report_to", "min_tweets", "sample_every")}
    training["tag_users"] = tagged
    training.update({k: metrics[k] for k in ("train_tokens", "wall_seconds", "tokens_per_second", "epochs", "steps")})
    evaluation = {"perplexity_before": metrics["perplexity_before"], "perplexity_after": metrics["perplexity_after"]}
    return ExportInfo(name=name, users=users, prompt_start=metrics["separator"], base_model=config.base_model,
                      training=training, evaluation=evaluation, license=base_license(config.base_model))


def export_stage(workdir: str | Path | WorkDir, name: str, out: Path, *, int8: bool = True, fp16: bool = True,
                 fp32: bool = True, copy_index: bool = True, sampling: dict | None = None, int4: bool = False):
    """Export the finished run `runs/<name>/model` of the work folder to `out`; returns the ExportReport.

    copy_index: ship copies.bin, the index of the training tweets' 8-word windows (tweetgen.copies).
    sampling: sampling defaults to write over DEFAULT_SAMPLING (temperature, top_k, top_p, min_p, repetition_penalty).
    """
    from tweetgen.trainer.export.export import export_model

    work = _as_work(workdir)
    info = export_info(work, name)
    split = work.split(work.run_config(name))
    copy_texts = [t for ts in split.train_texts().values() for t in ts] if copy_index else None
    info.sampling.update(sampling or {})
    return export_model(work.run_dir(name) / "model", out, info=info,
                        eval_texts=split.tagged(split.validation_rows)[:VALIDATION_CHECK_TEXTS],
                        int8=int8, fp16=fp16, fp32=fp32, int4=int4, copy_texts=copy_texts,
                        loss_curve=work.run_dir(name) / "loss.png")


def eval_stage(folder: str | Path, workdir: str | Path | WorkDir, *, name: str | None = None, samples: int = 500,
               seed: int = 0, precision: str = "auto", write: bool = True, judge=None):
    """Evaluate a model folder on the cleaned tweets of the work folder it was trained from; write eval.json and
    the card's section unless `write` is False. Returns the EvalReport.

    judge: a .gguf file or Hugging Face folder (or a loaded `Judge`) whose per-tweet perplexities measure fluency.

    The split is the one of the training run `name`; without a name, the run named like the folder's tweetgen.json
    when the work folder has it, else the split a default TrainConfig makes.
    """
    from tweetgen.trainer.eval.card import write_eval
    from tweetgen.trainer.eval.evaluate import evaluate_model

    work = _as_work(workdir)
    if name is None:
        own = str(read_folder(folder).info.get("name") or "")
        name = own if own and work.has_run(own) else None
    log.info("held-out tweets: the split of %s", f"run {name!r}" if name else "a default training config")
    split = work.split(work.run_config(name) if name is not None else TrainConfig())
    report = evaluate_model(folder, split.train_texts(), split.validation_texts(), samples=samples, seed=seed,
                            precision=precision, judge=judge)
    if write:
        write_eval(folder, report)
    return report

