"""Trainer callbacks: the rich progress display (stderr), and an evaluation of the final step."""

from __future__ import annotations

from transformers import TrainerCallback


class RichProgressCallback(TrainerCallback):
    """Shows one progress bar for training and prints each evaluation; silent on processes other than the first."""

    def __init__(self, console) -> None:
        self.console = console
        self.progress = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="-")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.3f}")
            if not self.console.is_terminal:  # a log file: no live bar, so one line per logged step
                self.console.print(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.3f}")
        if "eval_loss" in logs:
            self.progress.console.print(f"step {state.global_step}: validation loss {logs['eval_loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and checkpoint the last step too, so that the best-model choice at the end sees the final weights.

    Without it, a run whose last step is not a multiple of the evaluation interval ends by loading the best
    earlier checkpoint and drops the training done since.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True
        return control
