"""Samples while training (`--sample-every N`): every N optimizer steps, a few tweets from the current weights.

They go to the log (stderr, or the run's log file) and to the trackers that are on: W&B (a table, through
tweetgen.trainer.tracking.Tracker) and TensorBoard (text), so that a user sees the bot take shape.

The tweets are sampled (top-k 50, top-p 0.95, temperature 1), never greedy, from a fixed seed, so that the same draws
can be followed from one step to the next; the training's own random state is set aside and put back, so sampling
changes nothing in the run. A multi-user model writes a couple of tweets for each of a few voices spread over its
users; a single-voice model a few tweets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from transformers import TrainerCallback

from tweetgen.trainer.data.dataset import user_prefix

log = logging.getLogger(__name__)
SEED = 20240  # the fixed seed of every round of samples
VOICES = 3  # voices sampled, for a multi-user model
PER_VOICE = 2  # tweets per voice
SINGLE = 4  # tweets, for a single-voice model
MAX_NEW_TOKENS = 48  # tokens per tweet at most (tweets ending sooner stop at the separator)

Sink = Callable[[int, list[tuple[str, str]]], None]  # (step, [(voice, tweet), ...])


def sampled_voices(users: list[str], tagged: bool) -> list[str]:
    """The voices sampled: up to VOICES users spread evenly over the sorted users; [""] for an untagged model."""
    users = sorted(set(users))
    if not tagged or not users:
        return [""]
    count = min(VOICES, len(users))
    return [users[i * len(users) // count] for i in range(count)]


class SampleCallback(TrainerCallback):
    """Writes a few sampled tweets every `every` optimizer steps (on the first process only)."""

    def __init__(self, tokenizer, separator_id: int, every: int, voices: list[str], sinks: list[Sink] | None = None,
                 context: int = 1024) -> None:
        if every < 1:
            raise ValueError(f"every must be 1 or more, not {every}")
        self.tokenizer = tokenizer
        self.separator_id = separator_id
        self.every = every
        self.voices = voices
        self.sinks = list(sinks or [])
        self.context = context

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None or state.global_step % self.every:
            return
        samples = self.sample(model)
        lines = "\n".join(f"  {'@' + voice + ': ' if voice else ''}{text}" for voice, text in samples)
        log.info("step %d: samples from the current weights\n%s", state.global_step, lines)
        for sink in self.sinks:
            sink(state.global_step, samples)

    def sample(self, model) -> list[tuple[str, str]]:
        """[(voice, tweet), ...]: PER_VOICE tweets for each voice ("" when untagged: SINGLE tweets)."""
        import torch

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        forked = [device.index or 0] if device.type == "cuda" else []
        out: list[tuple[str, str]] = []
        try:
            with torch.random.fork_rng(devices=forked), torch.no_grad():
                torch.manual_seed(SEED)
                for voice in self.voices:
                    out += [(voice, text) for text in self._draw(model, voice, device)]
        finally:
            model.train(was_training)
        return out

    def _draw(self, model, voice: str, device) -> list[str]:
        import torch

        prompt = [self.separator_id]
        if voice:
            prompt += self.tokenizer(user_prefix(voice), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt], device=device)
        room = max(1, min(MAX_NEW_TOKENS, self.context - len(prompt)))
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50,
                                top_p=0.95, temperature=1.0, max_new_tokens=room,
                                num_return_sequences=PER_VOICE if voice else SINGLE,
                                eos_token_id=self.separator_id, pad_token_id=self.separator_id)
        return [self.tokenizer.decode(row[len(prompt):], skip_special_tokens=True).strip() for row in output]


def tensorboard_sink(trainer) -> Sink | None:
    """A sink writing the samples as text to the Trainer's TensorBoard run, when report_to has tensorboard."""
    from transformers.integrations import TensorBoardCallback

    board = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)
    if board is None:
        return None

    def write(step: int, samples: list[tuple[str, str]]) -> None:
        if getattr(board, "tb_writer", None) is not None:  # made when training begins
            text = "\n\n".join(f"**@{v}**: {t}" if v else t for v, t in samples)
            board.tb_writer.add_text("samples", text, step)

    return write
