"""The evaluation stage: memorization, diversity, the voice classifier, the card section, and a run on tiny_gpt2.

Synthetic texts only; no torch. The voice classifier needs scikit-learn, the CLI's split needs datasets.
"""

import json
import math
import random
import shutil

import numpy as np
import pytest

from conftest import TINY_GPT2
from tweetgen.trainer.eval.card import END, START, insert_section, render_eval_section, write_eval
from tweetgen.trainer.eval.memorization import MemorizationIndex, MemorizationStats, generate_fresh, words
from tweetgen.trainer.eval.textstats import Spread, TextStats, distinct_n

TRAIN = ["The quick brown fox jumps over the lazy dog near the river bank today",
         "I cannot wait to see the new rocket launch from the pad tomorrow morning",
         "Short one here"]
ROCKET = "rockets launch today moon mars orbit solar energy future engines booster".split()
COFFEE = "coffee morning love people great news tea garden books cake sunshine".split()


def synthetic(vocabulary, count, seed, style=lambda s: s):
    rng = random.Random(seed)
    return [style(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(5, 14)))) for _ in range(count)]


def shouting(text):
    return text.upper() + "!!!"


def quiet(text):
    return text.lower() + "..."


@pytest.fixture(scope="module")
def index():
    return MemorizationIndex({"alice": TRAIN[:2], "bob": TRAIN[2:]})


def test_words_are_lowercased_and_keep_handles_tags_and_apostrophes():
    assert words("Don’t STOP @Bob: #Launch, now!! 🚀") == ["don't", "stop", "@bob", "#launch", "now"]


def test_eight_consecutive_words_of_a_training_tweet_are_a_copy(index):
    copied = "Wow: FOX JUMPS OVER THE LAZY DOG NEAR THE river, said nobody"  # 8 words, other case and punctuation
    assert index.match(copied).verbatim and index.is_memorized(copied)
    seven = "well fox jumps over the lazy dog near a cat"  # only 7 in a row
    assert not index.match(seven).verbatim and not index.is_memorized(seven)


def test_eight_words_across_two_training_tweets_or_around_an_unknown_word_are_not_a_copy(index):
    across = "river bank today i cannot wait to see"  # end of one training tweet + start of the next
    assert not index.match(across).verbatim
    broken = "the quick brown fox zebra jumps over the lazy dog near"  # an unknown word splits 4 + 6
    assert not index.match(broken).verbatim
    after = "zebra " + " ".join(TRAIN[1].split()[3:11])  # an unknown word, then 8 known ones in a row
    assert index.match(after).verbatim


def test_near_duplicates_are_found_even_when_too_short_for_an_8_gram(index):
    near = "short one here!"
    match = index.match(near)
    assert not match.verbatim and match.near_duplicate and match.similarity == 1.0
    changed = "I cannot wait to see the new rocket launch from the pad tomorrow evening"
    assert index.match(changed).near_duplicate
    assert not index.match("short pants here").near_duplicate
    assert not index.is_memorized("a completely different tweet about cake and tea")


def test_memorization_stats_count_each_kind():
    stats = MemorizationStats.of(MemorizationIndex(TRAIN), [TRAIN[0], "short one here", "nothing like it at all"])
    assert (stats.checked, stats.verbatim, stats.near_duplicate, stats.memorized) == (3, 1, 2, 2)
    assert stats.share == pytest.approx(2 / 3) and stats.to_json()["share"] == pytest.approx(2 / 3)


def test_an_index_of_many_tweets_is_built_and_queried():
    tweets = synthetic(ROCKET + COFFEE + [f"w{i}" for i in range(500)], 5000, seed=1)
    index = MemorizationIndex(tweets)
    assert len(index) == 5000 and index.ngram_hashes.dtype.name == "uint64"
    assert all(index.is_memorized(t) for t in tweets[:50])


class ScriptedGenerator:
    """Returns scripted batches and records the seeds it was called with."""

    def __init__(self, batches):
        self.batches, self.seeds = list(batches), []

    def generate(self, prompt, n, *, seed=None, **kwargs):
        self.seeds.append(seed)
        batch = self.batches.pop(0)
        assert len(batch) == n
        return batch


def test_generate_fresh_redraws_only_the_copies_with_new_seeds(index):
    generator = ScriptedGenerator([[TRAIN[0], "fresh one", "short one here"], ["fresh two", TRAIN[1]], ["fresh 3"]])
    assert generate_fresh(generator, index, "", 3, seed=7, user="alice") == ["fresh one", "fresh two", "fresh 3"]
    assert generator.seeds[0] == 7 and len(set(generator.seeds)) == 3


def test_generate_fresh_gives_up_after_max_attempts(index):
    generator = ScriptedGenerator([[TRAIN[0], "fresh"], [TRAIN[0]]])
    assert generate_fresh(generator, index, "", 2, seed=0, max_attempts=2) == ["fresh"]
    with pytest.raises(ValueError, match="max_attempts"):
        generate_fresh(generator, index, "", 1, max_attempts=0)


def test_distinct_n_on_hand_made_lists():
    tokens = [["a", "b", "a"], ["a", "b"]]
    assert distinct_n(tokens, 1) == pytest.approx(2 / 5)
    assert distinct_n(tokens, 2) == pytest.approx(2 / 3)  # (a,b) (b,a) (a,b): no pair across the two texts
    assert distinct_n([["x"]], 2) == 0.0
    stats = TextStats.of(["one two three", "one two", "four"])
    assert stats.distinct_1 == pytest.approx(4 / 6) and stats.words == Spread.of([3, 2, 1])
    assert stats.chars.median == 7 and stats.count == 3


def test_the_classifier_tells_two_voices_apart_and_scores_generated_tweets():
    pytest.importorskip("sklearn")
    from tweetgen.trainer.eval.voice import VoiceClassifier, voice_scores

    train = {"loud": synthetic(ROCKET, 150, 1, shouting), "calm": synthetic(COFFEE, 150, 2, quiet)}
    heldout = {"loud": synthetic(ROCKET, 40, 3, shouting), "calm": synthetic(COFFEE, 40, 4, quiet)}
    assert min(VoiceClassifier(train).accuracy(heldout).values()) > 0.95
    swapped = {"loud": synthetic(COFFEE, 20, 5, quiet), "calm": heldout["calm"][:20]}  # loud's tweets sound calm
    scores = voice_scores(train, heldout, swapped)
    assert scores.per_user_generated["loud"] < 0.1 and scores.per_user_generated["calm"] > 0.9
    assert scores.chance == 0.5 and scores.ceiling > 0.95
    assert scores.fraction == pytest.approx((scores.generated - 0.5) / (scores.ceiling - 0.5))
    with pytest.raises(ValueError, match="two or more users"):
        VoiceClassifier({"loud": train["loud"]})


def report_json(**changes):
    stats = TextStats.of(["one two three", "four five"]).to_json()
    user = {"perplexity": 12.5, "perplexity_tokens": 40, "real": stats, "generated": stats,
            "memorization": {"share": 0.0}, "voice_generated": 0.75, "voice_real": 0.9}
    report = {"samples": 4, "variant": "model.onnx", "seed": 0, "prompt": "", "model": "m",
              "users": {"alice": user, "bob": user},
              "voice": {"generated": 0.75, "ceiling": 0.9, "chance": 0.5, "fraction": 0.625},
              "memorization": {"checked": 4, "memorized": 0, "share": 0.0}, "real_memorization": {"share": 0.25},
              "generated": stats, "real": stats, "distinct_2_ratio": 1.0,
              "targets": {"voice": True, "memorization": True, "distinct_2": True},
              "target_values": {"voice_fraction": 0.5, "memorized_below": 0.02, "distinct_2_ratio": 0.8}, "notes": []}
    return {**report, **changes}


def test_the_section_has_a_row_per_user_and_the_targets():
    section = render_eval_section(report_json())
    assert section.startswith(START) and section.endswith(END) and "## Evaluation" in section
    assert "| @alice | 12.5 | 75% | 90% | 0.0% |" in section and "| **all** | – | 75% | 90% |" in section
    assert "62% — met" in section and "Chance: 50%." in section


def test_the_section_replaces_itself_and_goes_before_how_to_use():
    card = "# m\n\n## Training data\n\nrows\n\n## How to use\n\ncode\n"
    once = insert_section(card, render_eval_section(report_json()))
    assert once.index("## Evaluation") < once.index("## How to use") and once.startswith("# m\n\n## Training data")
    twice = insert_section(once, render_eval_section(report_json(seed=9)))
    assert twice.count(START) == 1 and twice.count("## Evaluation") == 1 and "(seed 9," in twice
    assert insert_section("# plain\n", "S") == "# plain\n\nS\n"


def test_write_eval_writes_json_and_the_card_twice_without_duplicating(tmp_path):
    (tmp_path / "README.md").write_text("# m\n\n## How to use\n\nx\n")
    for _ in range(2):
        path = write_eval(tmp_path, report_json())
    assert json.loads(path.read_text())["samples"] == 4
    assert (tmp_path / "README.md").read_text().count("## Evaluation") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "eval.json"]  # no temporary files left


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY_GPT2, folder)
    return folder


def texts(seed):
    return {"alice": synthetic(ROCKET, 40, seed, shouting), "bob": synthetic(COFFEE, 40, seed + 1, quiet)}


def test_evaluate_model_end_to_end_on_tiny_gpt2(tiny, monkeypatch):
    pytest.importorskip("sklearn")
    from tweetgen.trainer.eval import evaluate
    from tweetgen.trainer.eval.evaluate import evaluate_model
    from tweetgen.trainer.eval.voice import VoiceClassifier

    scored = []  # the tweets evaluate_model generated, as it handed them to the voice metric
    real_voice_scores = evaluate.voice_scores
    monkeypatch.setattr(evaluate, "voice_scores", lambda t, h, generated: scored.append(generated) or
                        real_voice_scores(t, h, generated))
    train, heldout = texts(10), texts(20)
    report = evaluate_model(tiny, train, heldout, samples=20, seed=0)
    data = json.loads(json.dumps(report.to_json()))
    assert data["samples"] == 20 and set(data["users"]) == {"alice", "bob"}
    (generated,) = scored
    assert {u: len(ts) for u, ts in generated.items()} == {"alice": 10, "bob": 10}
    for user, tweets in generated.items():  # the very tweets whose lengths and diversity the report gives
        assert data["users"][user]["generated"] == json.loads(json.dumps(TextStats.of(tweets).to_json()))
    # each user's voice score is the share of the tweets generated for them that a classifier trained on the real
    # training tweets gives to them (fitting again gives evaluate_model's classifier: the fit is deterministic)
    expected = VoiceClassifier(train).accuracy(generated)
    for user in ("alice", "bob"):
        entry = data["users"][user]
        assert math.isfinite(entry["perplexity"]) and entry["perplexity"] > 1 and entry["perplexity_tokens"] > 0
        assert entry["memorization"]["checked"] == 10 and entry["generated"]["count"] == 10
        assert entry["voice_generated"] == pytest.approx(expected[user]) and entry["voice_real"] > 0.9
    assert data["voice"]["generated"] == pytest.approx((expected["alice"] + expected["bob"]) / 2)
    assert data["voice"]["chance"] == 0.5 and data["memorization"]["checked"] == 20
    assert set(data["targets"]) == {"voice", "memorization", "distinct_2", "length_median", "length_p90", "fluency"}
    assert data["targets"]["fluency"] is None and data["judge"] is None  # no judge given: not measured
    assert {"generate", "perplexity", "voice", "memorization"} <= set(data["seconds"])
    assert evaluate_model(tiny, train, heldout, samples=20, seed=0).to_json()["generated"] == data["generated"]
    # the length targets: every generated tweet against every held-out tweet (here 10 generated per user, 40
    # held-out each: the users weigh the same)
    every = [t for ts in generated.values() for t in ts]
    assert data["lengths"]["generated"]["median"] == np.median([len(t) for t in every])
    real = sorted(len(t) for ts in heldout.values() for t in ts)
    assert data["lengths"]["real"]["median"] == real[len(real) // 2 - 1]  # 80 values: the 40th, inverted CDF
    assert data["length_ratios"]["median"] == pytest.approx(data["lengths"]["generated"]["median"] / real[39])


@pytest.mark.parametrize("values, weights", [([5, 1, 3, 2, 4], [1, 1, 1, 1, 1]), ([10, 20, 30], [3, 1, 1]),
                                             ([7.0, 1.0, 7.0, 2.0, 9.0, 4.0], [2, 5, 1, 1, 3, 2])])
def test_weighted_spread_equals_repeating_each_value_weight_times(values, weights):
    repeated = np.repeat(values, weights)
    got = Spread.weighted(values, [w / 7 for w in weights])  # only the weights' proportions count
    want = np.percentile(repeated, [10, 50, 90], method="inverted_cdf")
    assert (got.p10, got.median, got.p90) == tuple(want) and got.mean == pytest.approx(repeated.mean())


def test_a_users_held_out_tweets_weigh_as_much_as_the_tweets_generated_for_them():
    from tweetgen.trainer.eval.evaluate import _real_lengths

    heldout = {"short": ["ab"] * 90, "long": ["x" * 50] * 10}
    assert _real_lengths(heldout, {"short": ["g"], "long": ["g"] * 3}).median == 50  # long: 3/4 of the weight
    assert _real_lengths(heldout, {"short": ["g"], "long": ["g"]}).mean == pytest.approx(26)  # half each
    assert _real_lengths(heldout, None).median == 2  # a single voice: every tweet once
    assert _real_lengths(heldout, {"short": ["g"] * 3, "long": ["g"]}).median == 2


def test_a_single_voice_model_is_evaluated_without_voice(tiny):
    from tweetgen.trainer.eval.evaluate import evaluate_model

    info = json.loads((tiny / "tweetgen.json").read_text())
    info["users"] = {}
    (tiny / "tweetgen.json").write_text(json.dumps(info))
    report = evaluate_model(tiny, {"solo": TRAIN}, {"solo": synthetic(ROCKET, 10, 3)}, samples=5).to_json()
    assert report["voice"] is None and report["targets"]["voice"] is None and report["samples"] == 5
    assert report["users"]["solo"]["generated"] is None and "single voice" in report["notes"][0]


def test_evaluate_model_refuses_voices_without_held_out_tweets(tiny):
    from tweetgen.trainer.errors import DataError
    from tweetgen.trainer.eval.evaluate import evaluate_model

    with pytest.raises(DataError, match="bob"):
        evaluate_model(tiny, texts(1), {"alice": ["a tweet of alice"]}, samples=2)
    with pytest.raises(ValueError, match="samples"):
        evaluate_model(tiny, texts(1), texts(2), samples=0)


def test_the_eval_stage_on_a_work_folder(tiny, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("datasets")
    pytest.importorskip("rich")  # the CLI's console
    from tweetgen.trainer.cli import main
    from tweetgen.trainer.data.dataset import save_clean

    workdir = tmp_path / "work"
    save_clean(workdir, texts(30))
    (workdir / "stats.json").write_text(json.dumps({"users": {"alice": {"kept": 40}, "bob": {"kept": 40}}}))
    assert main(["eval", "--model", str(tiny), "--workdir", str(workdir), "--samples", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 10 and report["users"]["alice"]["real"]["count"] == 4  # 10% of 40 held out
    assert json.loads((tiny / "eval.json").read_text()) == report
    assert (tiny / "README.md").read_text().count("## Evaluation") == 1
    assert main(["eval", "--model", str(tiny), "--workdir", str(workdir), "--name", "nope"]) == 1
    assert "train_config.json is missing" in capsys.readouterr().err
