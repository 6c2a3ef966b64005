"""Whose voice is a tweet in? A classifier of authors, trained on real tweets, asked about generated ones.

Character 2-5-grams within word boundaries (TF-IDF, sublinear counts) and a linear SVM with balanced class
weights: small, fast, and good at style (spelling, punctuation, emoji, pet words). Its accuracy on real held-out
tweets is the ceiling a model's voices can reach; 1 / users is chance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
MAX_FEATURES = 300_000  # n-grams kept by the vectorizer: bounds memory on large archives


@dataclass(frozen=True)
class VoiceScores:
    """Accuracy of the author classifier, per user and as the mean over users (each user counts the same)."""

    generated: float  # mean over users of the share of their generated tweets classified as theirs
    ceiling: float  # the same on real held-out tweets
    chance: float  # 1 / users
    per_user_generated: dict[str, float] = field(default_factory=dict)
    per_user_real: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """How far generated accuracy goes from chance (0) to the real-tweet ceiling (1); None without a ceiling."""
        gap = self.ceiling - self.chance
        return (self.generated - self.chance) / gap if gap > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"generated": self.generated, "ceiling": self.ceiling, "chance": self.chance,
                "fraction": self.fraction, "per_user_generated": dict(self.per_user_generated),
                "per_user_real": dict(self.per_user_real)}


class VoiceClassifier:
    """Predicts which of the users wrote a text."""

    def __init__(self, train_texts: dict[str, list[str]]) -> None:
        """Fit on each user's real tweets.

        Raises:
            ValueError: fewer than two users with tweets.
        """
        try:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.svm import LinearSVC
        except ImportError:
            raise ImportError("the voice metric needs scikit-learn: pip install 'tweetgen[train]' "
                              "(or pip install scikit-learn)") from None
        users = [u for u, texts in train_texts.items() if texts]
        if len(users) < 2:
            raise ValueError(f"a voice classifier needs two or more users with tweets, not {users}")
        texts = [t for u in users for t in train_texts[u]]
        labels = [u for u in users for _ in train_texts[u]]
        self.users = users
        self._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2,
                                           max_features=MAX_FEATURES, lowercase=False)
        self._model = LinearSVC(C=0.5, class_weight="balanced")
        self._model.fit(self._vectorizer.fit_transform(texts), labels)

    def predict(self, texts: list[str]) -> list[str]:
        """The most likely author of each text."""
        if not texts:
            return []
        return [str(u) for u in self._model.predict(self._vectorizer.transform(texts))]

    def accuracy(self, texts: dict[str, list[str]]) -> dict[str, float]:
        """Per user: the share of that user's texts classified as theirs (users without texts are left out)."""
        return {u: sum(p == u for p in self.predict(ts)) / len(ts) for u, ts in texts.items() if ts}


def voice_scores(train: dict[str, list[str]], heldout: dict[str, list[str]],
                 generated: dict[str, list[str]]) -> VoiceScores:
    """Fit on `train`, score real `heldout` tweets (the ceiling) and `generated` ones, per user."""
    classifier = VoiceClassifier(train)
    real = classifier.accuracy(heldout)
    fake = classifier.accuracy(generated)
    return VoiceScores(generated=_mean(fake), ceiling=_mean(real), chance=1 / len(classifier.users),
                       per_user_generated=fake, per_user_real=real)


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0
