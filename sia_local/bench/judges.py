"""Judges for `sia bench` and `sia eval`: scores of whole answers that are not the steering reward.

A judge shares neither data nor features with the reward it checks, or says where it does (`data`); any reward folder
can be one more (`RewardJudge`, `--judge DIR`). For a positive tone
(`kind`): the sentiment lexicons (VADER, TextBlob, AFINN). For an objective fitted from examples: a bag-of-words model
on examples the user gives (best the half the reward was not fitted on). For the built-in `formal`: informal markers
per 100 words (contractions, slang, exclamation marks) and Heylighen & Dewaele's formality F-score, which no file of
this project informs; for `concise`: lexical density (the share of content words); both objectives also get a
bag-of-words judge on their shipped examples (the reward's own data, other features). The style judges tag parts of
speech with TextBlob's bundled pattern tagger: offline, no NLTK corpus to download.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache, cached_property
from typing import Any, Protocol, Sequence

import numpy as np

from ..core.scorer import Scorer
from ..core.steer import Steerer
from ..errors import ConfigError, MissingPackageError


class Judge(Protocol):
    name: str

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]: ...


class VaderJudge:
    """VADER's compound sentiment (-1 .. 1): a lexicon scorer no steering reward here is fitted to."""

    name = "vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ConfigError("the VADER judge needs the vadersentiment package", "pip install vadersentiment, or pass --judge DIR") from None
        self._vader = SentimentIntensityAnalyzer()

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [self._vader.polarity_scores(t)["compound"] for t in texts]


class RewardJudge:
    """Any scorer (a reward folder, usually) as the judge: its score of each whole response."""

    def __init__(self, reward: Scorer) -> None:
        self.reward = reward
        self.name = reward.name

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [float(x) for x in self.reward.score_responses(prompt, [], [(t, []) for t in texts])]


class TextBlobJudge:
    """TextBlob's pattern-lexicon polarity (-1 .. 1)."""

    name = "textblob"

    def __init__(self) -> None:
        try:
            from textblob import TextBlob
        except ImportError:
            raise MissingPackageError("the TextBlob judge needs the textblob package", 'pip install "sia-local[judges]"') from None
        self._blob = TextBlob

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [float(self._blob(t).sentiment.polarity) for t in texts]


class AfinnJudge:
    """AFINN's word valences (-5 .. 5), summed and divided by the words: a long answer is not kinder for its length."""

    name = "afinn"

    def __init__(self) -> None:
        try:
            from afinn import Afinn
        except ImportError:
            raise MissingPackageError("the AFINN judge needs the afinn package", 'pip install "sia-local[judges]"') from None
        self._afinn = Afinn()

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [float(self._afinn.score(t)) / max(1, len(t.split())) for t in texts]


_WORD = re.compile(r"[a-z']+")


def _grams(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class BowJudge:
    """A bag-of-words judge of an objective from good and bad examples: a logistic model on word and word-pair
    frequencies (a vocabulary of those seen at least twice), its C chosen and its AUC reported by nested
    cross-validation. Its features share nothing with the reward's sentence embedding; `data` says whether its
    examples are the reward's own."""

    def __init__(self, good: Sequence[str], bad: Sequence[str], *, name: str = "bow", data: str = "") -> None:
        from ..rewards.objectives import MIN_PER_SIDE

        if min(len(good), len(bad)) < MIN_PER_SIDE:
            raise ConfigError(f"the bag-of-words judge has {len(good)} good and {len(bad)} bad examples; it needs {MIN_PER_SIDE} of each",
                              "pass more examples with --good / --bad")
        counts = Counter(g for t in [*good, *bad] for g in set(_grams(t)))
        self.vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}
        self.name, self.data = name, data
        self._examples = (list(good), list(bad))

    @cached_property
    def _model(self) -> tuple[np.ndarray, np.ndarray, Any]:
        """(mean, std, fit), on first use: the nested cross-validation takes seconds to a minute for a few hundred
        examples, which a run pays once and a caller that only names its judges never pays."""
        from ..rewards.objectives import fit_classifier

        good, bad = self._examples
        raw = self._features([*good, *bad])
        # standardised columns: word frequencies are hundredths, so without this the chosen penalty shrinks every
        # weight towards 0 and the judge's scores differ by ten-thousandths (its ranking intact, its scale unreadable)
        mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-9
        y = np.r_[np.ones(len(good)), np.zeros(len(bad))]
        return mean, std, fit_classifier((raw - mean) / std, y)

    @property
    def auc(self) -> float:
        """The nested cross-validated AUC on its own examples: a judge that cannot tell them apart cannot judge."""
        return float(self._model[2].cv_mean)

    def _features(self, texts: Sequence[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.vocab)))
        for row, text in enumerate(texts):
            grams = _grams(text)
            for g in grams:
                col = self.vocab.get(g)
                if col is not None:
                    x[row, col] += 1.0
            x[row] /= max(1, len(grams))
        return x

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        """The log-odds that each text is a good example (standardised word and word-pair frequencies)."""
        mean, std, fit = self._model
        return [float(v) for v in ((self._features(texts) - mean) / std) @ fit.w + fit.b]


# Contractions spelled out before tagging: the pattern tagger splits "can't" into "ca", "n", "'", "t" (a modal and two nouns).
_CONTRACTIONS = [(re.compile(p, re.I), r) for p, r in ((r"\bcan't\b", "can not"), (r"\bwon't\b", "will not"), (r"n't\b", " not"),
                                                       (r"'re\b", " are"), (r"'m\b", " am"), (r"'ll\b", " will"), (r"'ve\b", " have"),
                                                       (r"'d\b", " would"))]
_AUXILIARIES = frozenset("be is are was were been being am have has had having do does did".split())


def _tagger():  # type: ignore[no-untyped-def]
    try:
        from textblob.en import tag
    except ImportError:
        raise MissingPackageError("the style judges need the textblob package (its bundled part-of-speech tagger)",
                                  'pip install "sia-local[judges]"') from None
    return tag


def _tagged_words(tag, text: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(word, Penn tag) for each word of `text` (punctuation dropped), contractions spelled out first."""
    for pattern, full in _CONTRACTIONS:
        text = pattern.sub(full, text)
    return [(w.lower(), t) for w, t in tag(text) if w[:1].isalpha()]


class InformalJudge:
    """Informal markers per 100 words -- contractions, slang and interjections, exclamation marks: lower is more
    formal. Counts no phrase of the shipped examples' letters; on SmolLM2 a formal system prompt lowers it by about a
    quarter (docs/eval.md)."""

    name = "informal/100w"
    lower_is_better = True
    _SLANG = frozenset("gonna wanna gotta kinda sorta yeah yep yup nope okay ok hey hi lol haha omg cool awesome stuff guys dude wow "
                       "oh um uh huh yay btw pls thx cuz ya".split())
    _CONTRACTION = re.compile(r"\b[a-z]+'(?:t|s|re|m|ll|ve|d)\b", re.I)

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        out = []
        for text in (t.replace("\u2019", "'") for t in texts):
            words = re.findall(r"[A-Za-z']+", text)
            marks = sum(w.lower() in self._SLANG for w in words) + len(self._CONTRACTION.findall(text)) + text.count("!")
            out.append(100.0 * marks / len(words) if words else 0.0)
        return out


class _TaggedJudge:
    """A judge that scores each text from its part-of-speech tags (`score`)."""

    def __init__(self) -> None:
        self._tag = _tagger()

    def score(self, text: str) -> float:
        raise NotImplementedError

    def __call__(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [self.score(t) for t in texts]


class FScoreJudge(_TaggedJudge):
    """Heylighen & Dewaele's formality F-score (1999): (nouns + adjectives + prepositions + articles - pronouns - verbs -
    adverbs - interjections, each as % of words, + 100) / 2; higher is more formal (nominal, context-independent
    prose). A published measure no reward here is fitted to; it reads register, not politeness (the shipped formal
    letters, pronoun- and verb-heavy, score below the telegraphic casual ones)."""

    name = "f-score"

    def score(self, text: str) -> float:
        words = _tagged_words(self._tag, text)
        if not words:
            return 50.0
        plus = sum(t.startswith(("NN", "JJ")) or t == "IN" or w in ("a", "an", "the") for w, t in words)
        minus = sum(t in ("PRP", "PRP$", "WP", "WP$", "MD", "RB", "RBR", "RBS", "WRB", "UH") or t.startswith("VB") for w, t in words)
        return (100.0 * (plus - minus) / len(words) + 100.0) / 2.0


class DensityJudge(_TaggedJudge):
    """Lexical density: the share of words that carry content (nouns, adjectives, numerals, verbs other than be / have /
    do and modals); filler, hedges and restated frames lower it. Higher is more concise."""

    name = "density"

    def score(self, text: str) -> float:
        words = _tagged_words(self._tag, text)
        content = sum(t.startswith(("NN", "JJ", "CD")) or (t.startswith("VB") and w not in _AUXILIARIES) for w, t in words)
        return content / len(words) if words else 0.0


def _installed(makers: Sequence[type]) -> list[Judge]:
    judges: list[Judge] = []
    for make in makers:
        try:
            judges.append(make())
        except (ConfigError, MissingPackageError):
            continue
    return judges


@cache  # one fit a process, however many runs ask
def shipped_examples_judge(name: str) -> "BowJudge":
    """A bag-of-words judge on a built-in objective's shipped examples (the reward's own data, other features)."""
    from ..rewards.objectives import shipped_examples

    return BowJudge(*shipped_examples(name), name=f"bow:{name}", data="the reward's own examples (other features)")


def tone_judges() -> list[Judge]:
    """The sentiment lexicons that are installed (at least one, else one line saying what to install)."""
    judges = _installed((VaderJudge, TextBlobJudge, AfinnJudge))
    if not judges:
        raise MissingPackageError("judging a positive tone needs a sentiment lexicon (VADER, TextBlob or AFINN)", 'pip install "sia-local[judges]"')
    return judges


NAMED: dict[str, type] = {"vader": VaderJudge, "textblob": TextBlobJudge, "afinn": AfinnJudge, "informal": InformalJudge,
                          "f-score": FScoreJudge, "density": DensityJudge}


def named_judges(names: Sequence[str]) -> list[Judge]:
    """The judges a user names (`--judges informal,f-score`): any judge on any objective, e.g. a fitted register's
    answers read by the formality judges too."""
    unknown = [n for n in names if n not in NAMED]
    if unknown:
        raise ConfigError(f"--judges: unknown judge {unknown[0]!r}", f"choose from {', '.join(NAMED)}")
    return [NAMED[n]() for n in dict.fromkeys(names)]


def judges_for(steerer: Steerer, objective: str | None, good: Sequence[str] = (), bad: Sequence[str] = ()) -> list[Judge]:
    """The independent judges of `objective` (the name the user steers with): the user's examples make a bag-of-words
    judge; `kind` gets the lexicons; `formal` informal markers and the F-score, `concise` lexical density, each with
    a bag-of-words judge on its shipped examples after them."""
    if good or bad:
        return [BowJudge(good, bad, name=f"bow:{objective or 'objective'}", data="your examples")]
    name = (objective or "kind").split(":")[0]
    if name == "kind" or "positive, kind tone" in (getattr(steerer.scorer, "objective", None) or ""):
        return tone_judges()
    if name == "formal":
        return [InformalJudge(), *_installed((FScoreJudge,)), shipped_examples_judge(name)]
    if name == "concise":
        return [*_installed((DensityJudge,)), shipped_examples_judge(name)]
    raise ConfigError(f"no independent judge is known for the objective {name!r}", "pass --good FILE --bad FILE (examples the reward was not "
                      "fitted on) for a bag-of-words judge, or --judge DIR (a reward folder)")
