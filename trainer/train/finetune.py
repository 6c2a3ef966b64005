"""Fine-tuning: the training set in, a Hugging Face model folder out, with perplexity before and after.

transformers' Trainer does the work, so checkpoints, `--resume`, early stopping, mixed precision, `report_to`
tracking and several processes (`torchrun --nproc_per_node 2 -m trainer.cli ...`, gloo on CPU) come with it.
Layout of a run folder:
  checkpoints/        Trainer checkpoints (kept for --resume)
  model/              the fine-tuned model and tokenizer (written last; its presence marks a finished run)
  train_config.json   the resolved TrainConfig
  metrics.json        perplexity before/after, tokens, wall time, the loss history
  loss.png            the loss curve
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError

from tweetgen.trainer.train.base_model import load_base, separator_token
from tweetgen.trainer.train.config import TrainConfig, report_targets

log = logging.getLogger(__name__)


class TrainError(TweetgenError):
    """Training cannot start or go on (too little data, an interrupted run without --resume, ...)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced and measured."""

    model_dir: Path
    perplexity_before: float  # validation perplexity of the base model
    perplexity_after: float  # validation perplexity of the fine-tuned model
    train_tokens: int  # tokens the model was trained on, repeats of epochs included
    wall_seconds: float  # time spent in the training loop by this process (a resumed run: since the resume)
    tokens_per_second: float
    epochs: float  # epochs actually run (early stopping may end sooner)
    steps: int
    separator: str  # the token between tweets, also the prompt start at run time

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def pack(texts: list[str], tokenizer, separator_id: int, block_size: int) -> dict[str, list[list[int]]]:
    """Tokenize tweets into blocks of `block_size` tokens, `SEP t1 SEP t2 SEP ... pad`, whole tweets only.

    Every block starts with the separator and holds whole tweets, each followed by the separator, as many as fit; the
    rest is padding, masked out of attention and loss. So the model learns each tweet from its first token at the
    positions where it will write one (after the prompt start), and never learns an end of text after the tail of a
    tweet cut at a block's edge (with a stream cut every `block_size` tokens, each block began inside a tweet, whose
    remains ended within a few positions: short tweets, taught at the very positions where tweets are generated).
    A tweet longer than a block on its own is cut into blocks of its own.
    """
    blocks: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}

    def flush(chunk: list[int]) -> None:
        pad = block_size - len(chunk)
        blocks["input_ids"].append(chunk + [separator_id] * pad)
        blocks["attention_mask"].append([1] * len(chunk) + [0] * pad)
        blocks["labels"].append(chunk + [-100] * pad)

    chunk = [separator_id]
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        tweet = [*ids, separator_id]
        if len(chunk) + len(tweet) <= block_size:
            chunk += tweet
            continue
        if len(chunk) > 1:
            flush(chunk)
        chunk = [separator_id, *tweet]
        while len(chunk) > block_size:  # longer than a block: its own blocks, each going on from the last
            flush(chunk[:block_size])
            chunk = chunk[block_size - 1:]  # the next block starts with the last token (context for the rest)
    if len(chunk) > 1:
        flush(chunk)
    return blocks


def train(dataset, config: TrainConfig, run_dir: Path, *, resume: bool = False, console=None,
          tracker=None) -> TrainResult:
    """Fine-tune `config.base_model` on a DatasetDict with "train" and "validation" splits of tweet texts.

    With `config.lora`, LoRA adapters train and are merged into the base before the model is saved. With
    `config.sample_every`, a few sampled tweets go to the log (and to `tracker`, a tracking.Tracker) every N steps.

    Raises:
        TrainError: too little data, or checkpoints of an unfinished run and no `resume`.
        BaseModelError: the base model cannot be loaded or is not a causal LM.
    """
    import datasets

    with contextlib.redirect_stdout(sys.stderr):  # importing Trainer prints a line when WANDB_MODE=offline
        from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, default_data_collator

    run_dir = Path(run_dir)
    _check_data(dataset, config)
    checkpoints = _prepare_run_dir(run_dir, resume)
    base = config.base_model
    if base.startswith("scratch:") and resume and (run_dir / "tokenizer").is_dir():
        base += f",tokenizer={run_dir / 'tokenizer'}"  # the tokenizer trained when the run began, not a new one
    model, tokenizer = load_base(base, texts=list(dataset["train"]["text"]))
    if config.lora:
        from tweetgen.trainer.train.lora import with_lora

        model = with_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    separator = separator_token(tokenizer)
    block_size = min(config.block_size, _context_length(model.config))
    splits = {name: datasets.Dataset.from_dict(pack(list(dataset[name]["text"]), tokenizer,
                                                    tokenizer.convert_tokens_to_ids(separator), block_size))
              for name in ("train", "validation")}
    real_tokens = sum(map(sum, splits["train"]["attention_mask"]))
    from tweetgen.trainer.train.progress import EvaluateAtEnd, RichProgressCallback

    callbacks = [EvaluateAtEnd()] + ([RichProgressCallback(console)] if console is not None else [])
    trainer = Trainer(model=model, args=_training_arguments(config, checkpoints, len(splits["train"])),
                      train_dataset=splits["train"], eval_dataset=splits["validation"],
                      data_collator=default_data_collator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts on stdout; progress has its own display
    if config.sample_every:
        _add_samples(trainer, dataset, tokenizer, separator, config.sample_every, tracker)
    before = _perplexity(trainer.evaluate(metric_key_prefix="before"), "before_loss")
    if config.early_stopping > 0:  # added after the "before" evaluation, which is not one of the run's
        trainer.add_callback(EarlyStoppingCallback(config.early_stopping))
    resumed_at = _last_checkpoint_epoch(checkpoints) if resume else 0.0
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(_complete_checkpoint(checkpoints)) if resume else None)
    except OSError as exc:
        raise _write_error(exc, checkpoints) from None
    wall = time.perf_counter() - started
    # The weights now loaded are the best checkpoint's, whose validation loss the run already measured.
    best = trainer.state.best_metric
    after = _perplexity({"eval_loss": best} if best is not None else trainer.evaluate(), "eval_loss")
    epochs = float(trainer.state.epoch or 0)
    trained = int(real_tokens * epochs)
    result = TrainResult(
        model_dir=run_dir / "model", perplexity_before=before, perplexity_after=after, train_tokens=trained,
        # speed of this process only: a resumed run's earlier part ran elsewhere, at its own speed
        wall_seconds=wall, tokens_per_second=real_tokens * (epochs - resumed_at) / wall if wall else 0.0,
        epochs=epochs,
        steps=int(output.global_step), separator=separator)
    if trainer.is_world_process_zero():
        try:
            _save_outputs(trainer, tokenizer, config, result, run_dir)
        except OSError as exc:
            raise _write_error(exc, run_dir) from None
    return result


def _add_samples(trainer, dataset, tokenizer, separator: str, every: int, tracker) -> None:
    from tweetgen.trainer.data.dataset import user_prefix
    from tweetgen.trainer.train.samples import SampleCallback, sampled_voices, tensorboard_sink

    head = dataset["train"][:20]
    tagged = all(t.startswith(user_prefix(u)) for t, u in zip(head["text"], head["user"]))
    sinks = [tensorboard_sink(trainer), tracker.log_samples if tracker is not None and tracker.active else None]
    trainer.add_callback(SampleCallback(tokenizer, tokenizer.convert_tokens_to_ids(separator), every,
                                        sampled_voices(list(dataset["train"]["user"]), tagged),
                                        [s for s in sinks if s is not None], _context_length(trainer.model.config)))


def _write_error(exc: OSError, where: Path) -> TrainError:
    """A failed write during training, said plainly; the last complete checkpoint stays, and --resume goes on."""
    path = exc.filename or where
    if exc.errno == errno.ENOSPC:
        return TrainError(f"disk full while writing {path}: free some space, then run the same command with --resume "
                          "(the last complete checkpoint is kept; a half-written one is set aside)")
    return TrainError(f"cannot write {path}: {exc.strerror or exc}; fix that, then run the same command with --resume")


def _check_data(dataset, config: TrainConfig) -> None:
    count = len(dataset["train"]) + len(dataset["validation"])
    if count < config.min_tweets or len(dataset["validation"]) == 0 or len(dataset["train"]) == 0:
        raise TrainError(
            f"too little data to train: {len(dataset['train'])} training and {len(dataset['validation'])} validation "
            f"tweets; tweetgen needs at least {config.min_tweets} kept tweets with some held out for validation "
            "(a few hundred or more give a model worth using)")


def _prepare_run_dir(run_dir: Path, resume: bool) -> Path:
    checkpoints = run_dir / "checkpoints"
    finished = (run_dir / "model").is_dir()
    if resume:
        _drop_partial_checkpoints(checkpoints)
        if finished and _complete_checkpoint(checkpoints) is None:
            raise TrainError(f"--resume: the run in {run_dir} is finished (its model is in {run_dir / 'model'}); "
                             "export it, or run without --resume to train again")
        if _complete_checkpoint(checkpoints) is None:
            raise TrainError(f"--resume: {checkpoints} holds no complete checkpoint to resume from; run without "
                             "--resume")
    if not resume and _has_checkpoint(checkpoints) and not finished:
        raise TrainError(f"{run_dir} holds checkpoints of an unfinished run: add --resume to continue it, or "
                         "remove that folder to start again")
    if not resume and finished:
        shutil.rmtree(checkpoints, ignore_errors=True)  # a finished run's checkpoints: a new run replaces them
    run_dir.mkdir(parents=True, exist_ok=True)
    return checkpoints


def _last_checkpoint_epoch(folder: Path) -> float:
    """The epoch the newest checkpoint reached (0.0 without one): where a resumed run starts."""
    newest = _complete_checkpoint(folder)
    if newest is None:
        return 0.0
    return float(json.loads((newest / "trainer_state.json").read_text(encoding="utf-8")).get("epoch") or 0.0)


def _complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing (it writes trainer_state.json after the weights and the
    optimizer state), or None."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[-1])) if done else None


def _drop_partial_checkpoints(folder: Path) -> None:
    """Remove the checkpoints without trainer_state.json: a run killed while saving leaves one, newer than the last
    complete checkpoint, and the Trainer would resume from it (the newest folder) and fail on the missing state."""
    for partial in folder.glob("checkpoint-*"):
        if not (partial / "trainer_state.json").is_file():
            log.warning("removing %s: a checkpoint the stopped run did not finish writing", partial)
            shutil.rmtree(partial)


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def _context_length(config) -> int:
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


def _training_arguments(config: TrainConfig, output_dir: Path, train_blocks: int):
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    precision = config.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    strategy = "steps" if config.eval_steps > 0 else "epoch"
    steps_per_epoch = max(1, math.ceil(train_blocks / (config.batch_size * config.gradient_accumulation)))
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, warmup_ratio=config.warmup_ratio, weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation, seed=config.seed, data_seed=config.seed,
        eval_strategy=strategy, save_strategy=strategy, eval_steps=config.eval_steps or None,
        save_steps=config.eval_steps or None, save_total_limit=max(1, config.checkpoints_kept),
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_strategy="steps", logging_steps=max(1, min(50, steps_per_epoch // 10)), logging_first_step=True,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        report_to=report_targets(config.report_to), disable_tqdm=True,
        dataloader_num_workers=0, save_safetensors=True)


def _perplexity(metrics: dict[str, float], key: str) -> float:
    loss = metrics[key]
    return math.exp(loss) if loss < 50 else float("inf")


def _save_outputs(trainer, tokenizer, config: TrainConfig, result: TrainResult, run_dir: Path) -> None:
    """The model folder last, through a temporary name, so that its presence means a finished run."""
    from tweetgen.trainer.train.lora import is_lora, merged

    staging = run_dir / "model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if is_lora(trainer.model):  # the adapters folded into the base: a plain model folder, without adapter files
        merged(trainer.model).save_pretrained(str(staging))
    else:
        trainer.save_model(str(staging))
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    os.replace(staging, run_dir / "model")
    config.save(run_dir / "train_config.json")
    history = trainer.state.log_history
    (run_dir / "metrics.json").write_text(json.dumps({**result.to_json(), "log_history": history}, indent=2) + "\n")
    _plot_loss(history, run_dir / "loss.png")


def _plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no loss curve (pip install matplotlib)")
        return
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for points, label, style in ((train, "training loss", "-"), (evals, "validation loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
