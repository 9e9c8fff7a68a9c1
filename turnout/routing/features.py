"""Cheap text features for routers: a small TF-IDF and a handful of prompt statistics.

Both are plain numpy/scipy so a trained router scores a prompt in well under a millisecond and
its state saves as arrays (no pickles). The TF-IDF mirrors scikit-learn's defaults for
``TfidfVectorizer(sublinear_tf=True, min_df=2)``: lower-cased ``\\b\\w\\w+\\b`` tokens (plus
optional bigrams), smoothed idf ``ln((1 + n) / (1 + df)) + 1``, ``1 + ln(tf)``, rows L2-normalised.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import sparse

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPTION = re.compile(r"^[A-D]\.\s", re.MULTILINE)
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT)\b")
_MATH = re.compile(r"[=+\-*/^<>%$]")

STAT_NAMES = (
    "log_chars",
    "log_words",
    "digit_share",
    "log_numbers",
    "options",
    "negation",
    "questions",
    "log_lines",
    "math_share",
    "upper_share",
)


def tokens(text: str, ngrams: int = 1) -> list[str]:
    words = _TOKEN.findall(text.lower())
    out = list(words)
    for n in range(2, ngrams + 1):
        out += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return out


def text_stats(text: str) -> np.ndarray:
    """A few length and shape statistics of one prompt, roughly in [0, 1]."""
    chars = max(len(text), 1)
    words = len(text.split())
    return np.array(
        [
            math.log1p(len(text)) / 10.0,
            math.log1p(words) / 8.0,
            sum(c.isdigit() for c in text) / chars,
            math.log1p(len(_NUMBER.findall(text))) / 4.0,
            min(len(_OPTION.findall(text)), 6) / 6.0,
            min(len(_NEGATION.findall(text)), 3) / 3.0,
            min(text.count("?"), 5) / 5.0,
            math.log1p(text.count("\n")) / 4.0,
            len(_MATH.findall(text)) / chars,
            sum(c.isupper() for c in text) / chars,
        ],
        dtype=np.float32,
    )


def stats_matrix(texts: list[str]) -> np.ndarray:
    return np.vstack([text_stats(t) for t in texts]) if texts else np.zeros((0, len(STAT_NAMES)), np.float32)


@dataclass
class Tfidf:
    """A minimal TF-IDF vectoriser whose state is a vocabulary list and an idf array."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    ngrams: int = 1

    @classmethod
    def fit(cls, texts: list[str], min_df: int = 2, max_features: int = 50_000, ngrams: int = 1) -> Tfidf:
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(tokens(text, ngrams)))
        kept = [(term, count) for term, count in df.items() if count >= min_df]
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        kept = sorted(kept[:max_features])
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + c)) + 1.0 for _, c in kept], dtype=np.float32)
        return cls(vocabulary={t: i for i, (t, _) in enumerate(kept)}, idf=idf, ngrams=ngrams)

    def transform(self, texts: list[str]) -> sparse.csr_matrix:
        indptr, indices, values = [0], [], []
        for text in texts:
            counts = Counter(i for i in (self.vocabulary.get(t) for t in tokens(text, self.ngrams)) if i is not None)
            cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
            row = tf * self.idf[cols] if len(cols) else tf
            norm = float(np.linalg.norm(row))
            indices.append(cols)
            values.append(row / norm if norm > 0 else row)
            indptr.append(indptr[-1] + len(cols))
        return sparse.csr_matrix(
            (
                np.concatenate(values) if values else np.zeros(0, np.float32),
                np.concatenate(indices) if indices else np.zeros(0, np.int64),
                np.asarray(indptr),
            ),
            shape=(len(texts), len(self.idf)),
            dtype=np.float32,
        )

    def terms(self) -> list[str]:
        out = [""] * len(self.vocabulary)
        for term, i in self.vocabulary.items():
            out[i] = term
        return out

    @classmethod
    def from_terms(cls, terms: list[str], idf: np.ndarray, ngrams: int) -> Tfidf:
        return cls(vocabulary={t: i for i, t in enumerate(terms)}, idf=np.asarray(idf, np.float32), ngrams=ngrams)


# Structural difficulty of a math word problem: how many quantities it juggles and of what kind.
# Each is a generic property of the text (no prompt- or data-set-specific keys): more numbers,
# larger or fractional ones, percentages, rates and multi-clause questions mean more steps.
_QUANTITY = re.compile(r"\$?\.?\d[\d,]*(?:\.\d+)?%?|\$\.\d+")
_NUMBER_WORD = re.compile(
    r"\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|"
    r"thousand|million|dozen|half|halves|third|thirds|quarter|quarters|fourth|fifths?|tenths?|twice|double|"
    r"triple|thrice)\b",
    re.IGNORECASE,
)
_FRACTION = re.compile(r"\b\d+\s*/\s*\d+\b|\b(?:half|halves|thirds?|quarters?|fourths?|fifths?|tenths?)\b",
                       re.IGNORECASE)
_RATIO = re.compile(r"\b(?:times|twice|double|triple|ratio|per|each|every|average|rate)\b", re.IGNORECASE)
_COMPARE = re.compile(r"\b(?:more|less|fewer|than|longer|shorter|older|younger|faster|slower)\b", re.IGNORECASE)
_UNIT = re.compile(
    r"\b(?:hours?|minutes?|seconds?|days?|weeks?|months?|years?|miles?|kilometers?|km|meters?|feet|foot|inches?|"
    r"pounds?|ounces?|kg|grams?|liters?|gallons?|cups?|dollars?|cents?|mph)\b",
    re.IGNORECASE,
)
_CHANGE = re.compile(r"\b(?:increase[ds]?|decrease[ds]?|discount|profit|loss|interest|tax|remaining|rest|left)\b",
                     re.IGNORECASE)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_ASK = re.compile(r"\b(?:how many|how much|how long|how far|how old|what is|what was|what percent|find)\b",
                  re.IGNORECASE)

MATH_STAT_NAMES = (
    "log_quantities",
    "log_number_words",
    "log_max_magnitude",
    "mean_log_magnitude",
    "decimals",
    "percents",
    "money",
    "fractions",
    "ratio_words",
    "comparisons",
    "units",
    "distinct_units",
    "change_words",
    "sentences",
    "asks",
    "log_words",
    "words_per_sentence",
    "quantities_per_sentence",
)


def math_stats(text: str) -> np.ndarray:
    """Structural difficulty statistics of a math word problem, each roughly in [0, 1]."""
    quantities = _QUANTITY.findall(text)
    values = []
    for q in quantities:
        try:
            values.append(abs(float(q.strip("$%").replace(",", "") or "0")))
        except ValueError:
            continue
    logs = [math.log10(1.0 + v) for v in values] or [0.0]
    words = max(len(text.split()), 1)
    sentences = max(len(_SENTENCE.findall(text)), 1)
    units = [u.lower().rstrip("s") for u in _UNIT.findall(text)]
    n_quant = len(quantities) + len(_NUMBER_WORD.findall(text))
    return np.array(
        [
            math.log1p(len(quantities)) / 3.0,
            math.log1p(len(_NUMBER_WORD.findall(text))) / 3.0,
            max(logs) / 7.0,
            float(np.mean(logs)) / 7.0,
            min(sum("." in q.strip("$").rstrip(".") for q in quantities), 5) / 5.0,
            min(text.count("%") + len(re.findall(r"\bpercent", text, re.IGNORECASE)), 5) / 5.0,
            min(text.count("$"), 8) / 8.0,
            min(len(_FRACTION.findall(text)), 5) / 5.0,
            min(len(_RATIO.findall(text)), 8) / 8.0,
            min(len(_COMPARE.findall(text)), 8) / 8.0,
            min(len(units), 10) / 10.0,
            min(len(set(units)), 5) / 5.0,
            min(len(_CHANGE.findall(text)), 5) / 5.0,
            min(sentences, 12) / 12.0,
            min(len(_ASK.findall(text)), 3) / 3.0,
            math.log1p(words) / 6.0,
            min(words / sentences, 60) / 60.0,
            min(n_quant / sentences, 6) / 6.0,
        ],
        dtype=np.float32,
    )


def math_stats_matrix(texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, len(MATH_STAT_NAMES)), np.float32)
    return np.vstack([math_stats(t) for t in texts])
