"""Full fine-tuning against LoRA on one account, on the CPU: time per step and per epoch, peak memory, perplexity.

    python benchmarks/lora_vs_full.py --base SmolLM2-135M-Instruct.Q4_1.gguf \\
        --file ../shared/data/tweets/tweety/NASA.csv --steps 20 --threads 1 --out lora_vs_full.json

Each mode trains in a process of its own (so that each peak RSS is its own) for a fixed number of optimizer steps,
from the same base, on the same split (tweetgen-train's: 10% of the tweets held out), and reports:
  - seconds per optimizer step: the median over the steps (evaluations excluded), and the epoch at that pace;
  - peak resident memory of the process (the base loaded, training, both evaluations);
  - held-out perplexity of the base and after the steps (tweetgen's validation loss, tweets packed as in training);
  - with --judge FILE_OR_DIR: each trained model exported (int8) and evaluated as `tweetgen-train eval --judge`
    does, on --samples generated tweets against as many held-out real ones: the judge ratio (generated / real
    median perplexity) and the median length, generated against real.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"full": {"lora": False}, "lora": {"lora": True}}


def child(args: argparse.Namespace) -> None:
    """One mode's run, in this process; prints its JSON line."""
    import statistics

    import torch
    from transformers import Trainer, TrainerCallback

    from tweetgen.trainer.train.config import TrainConfig
    from tweetgen.trainer.train.finetune import train
    from tweetgen.trainer.workdir import WorkDir

    torch.set_num_threads(args.threads)
    steps: list[float] = []
    loaded: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):  # the base loaded and evaluated, nothing trained yet
            loaded.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

        def on_step_begin(self, a, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            steps.append(time.perf_counter() - self.started)

    real_init = Trainer.__init__

    def init(self, *a, **kw):  # the clock on every Trainer this run makes
        real_init(self, *a, **kw)
        self.add_callback(StepClock())

    Trainer.__init__ = init
    config = TrainConfig(base_model=str(args.base), max_steps=args.steps, eval_steps=args.steps, early_stopping=0,
                         batch_size=args.batch_size, block_size=args.block_size, precision="fp32",
                         learning_rate=args.lr_lora if args.mode == "lora" else args.lr_full,
                         lora_rank=args.lora_rank, lora_dropout=args.lora_dropout, **MODES[args.mode])
    work = WorkDir(args.workdir)
    dataset = work.split(config).dataset()
    result = train(dataset, config, Path(args.workdir) / "runs" / args.mode)
    step = statistics.median(steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    judged = _judge(args, work, config, Path(result.model_dir)) if args.judge else {}
    print(json.dumps({**judged, "mode": args.mode, "steps": result.steps, "seconds_per_step": step,
                      "seconds_per_epoch": step * result.steps / result.epochs, "epochs_run": result.epochs,
                      "peak_rss_mb": peak_mb, "peak_rss_before_training_mb": loaded[0], "perplexity_base": result.perplexity_before,
                      "perplexity_after": result.perplexity_after, "train_tweets": len(dataset["train"]),
                      "validation_tweets": len(dataset["validation"]), "learning_rate": config.learning_rate}))


def _judge(args: argparse.Namespace, work, config, model_dir: Path) -> dict:
    """Export the trained model (int8, no fp32 kept) and evaluate it with the judge; its ratio and lengths."""
    from tweetgen.trainer.eval.evaluate import evaluate_model
    from tweetgen.trainer.export.export import export_folder_info, export_model

    out = Path(args.workdir) / "exported" / args.mode
    export_model(model_dir, out, info=export_folder_info(model_dir, args.mode), fp16=False, fp32=False)
    split = work.split(config)
    report = evaluate_model(out, split.train_texts(), split.validation_texts(), samples=args.samples, seed=0,
                            judge=str(args.judge)).to_json()
    return {"judge_ratio": report["judge"]["ratio"], "judge_generated": report["judge"]["generated"],
            "judge_real": report["judge"]["real"], "median_chars": report["generated"]["chars"]["median"],
            "median_chars_real": report["real"]["chars"]["median"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the base model: a .gguf file or a Hugging Face folder")
    parser.add_argument("--file", type=Path, help="the account's tweets (a CSV, JSONL, ... file)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per mode (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr-full", type=float, default=5e-5)
    parser.add_argument("--lr-lora", type=float, default=5e-4)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--judge", type=Path, help="a judge model (.gguf or folder): also the judge ratio")
    parser.add_argument("--samples", type=int, default=100, help="tweets generated for the judge (%(default)s)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as workdir:
        subprocess.run([sys.executable, "-m", "tweetgen.trainer.cli", "clean", "--file", str(args.file), "--workdir",
                        workdir], check=True, stdout=subprocess.DEVNULL)
        results = []
        for mode in args.modes.split(","):
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--workdir", workdir],
                                 check=True, env=env, stdout=subprocess.PIPE, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    print("| mode | s / step | s / epoch | peak RSS (MB): before training, in all | held-out perplexity: base -> after "
          "| judge ratio (gen / real) | median chars, gen / real |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        judged = (f"{r['judge_ratio']:.3f} ({r['judge_generated']:.0f} / {r['judge_real']:.0f}) | "
                  f"{r['median_chars']:.0f} / {r['median_chars_real']:.0f}") if "judge_ratio" in r else "- | -"
        print(f"| {r['mode']} | {r['seconds_per_step']:.2f} | {r['seconds_per_epoch']:.0f} | "
              f"{r['peak_rss_before_training_mb']:.0f}, {r['peak_rss_mb']:.0f} | "
              f"{r['perplexity_base']:.2f} -> {r['perplexity_after']:.2f} | {judged} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
