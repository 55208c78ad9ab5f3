"""Per-class metrics of a classification task (its targets come from a small label set).

A task's accuracy hides which labels a checkpoint gets wrong: per label, precision, recall and F1
(scikit-learn's), their macro mean with a bootstrap 95% interval, and the confusion matrix. An
answer outside the label set (the scorer's ``answer``, stripped) counts as wrong for its target
and is counted in the confusion matrix's ``(other)`` column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

OTHER = "(other)"  # the confusion matrix's column of answers outside the label set
MAX_LABELS = 20
RESAMPLES = 2000


@dataclass
class ClassReport:
    labels: list[str]  # the sorted distinct targets
    precision: list[float]  # per label, in the order of ``labels``
    recall: list[float]
    f1: list[float]
    support: list[int]  # samples whose target is the label
    macro_f1: float  # the mean of ``f1`` (sklearn's f1_score(average="macro"))
    macro_f1_low: float  # 95% percentile bootstrap interval
    macro_f1_high: float
    confusion: pd.DataFrame  # rows: target label; columns: answer label, then OTHER
    n: int  # samples
    clusters: int | None  # clusters resampled for the interval; None: samples were resampled

    @property
    def other(self) -> int:
        """Answers outside the label set (no answer included)."""
        return int(self.confusion[OTHER].sum())


def _text(v: Any) -> str:
    if isinstance(v, (list, tuple)):  # an inspect target may be a list of acceptable answers
        v = v[0] if len(v) == 1 else " | ".join(str(x) for x in v)
    return str(v).strip()


def is_classification(targets: Sequence[Any]) -> bool:
    """Whether a task's targets look like labels: at least 2 and at most 20 distinct ones, and no
    more distinct targets than half the samples (each label repeats, on average)."""
    distinct = {_text(t) for t in targets}
    return 2 <= len(distinct) <= MAX_LABELS and len(distinct) <= len(targets) / 2


def _codes(targets: Sequence[Any], answers: Sequence[Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The labels, and each sample's target and answer as label indices (answer ``len(labels)``:
    outside the label set, or no answer)."""
    t = [_text(x) for x in targets]
    labels = sorted(set(t))
    index = {label: i for i, label in enumerate(labels)}
    a = [index.get(_text(x), len(labels)) if x is not None else len(labels) for x in answers]
    return labels, np.array([index[x] for x in t], dtype=np.int64), np.array(a, dtype=np.int64)


def _macro_f1(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices (..., L, L + 1): per label 2 TP / (true + predicted), 0 where
    the label is neither a target nor an answer (sklearn's zero_division=0), averaged over labels."""
    n_labels = confusion.shape[-2]
    tp = np.diagonal(confusion[..., :n_labels], axis1=-2, axis2=-1)
    true = confusion.sum(axis=-1)
    predicted = confusion[..., :n_labels].sum(axis=-2)
    denom = true + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(denom.shape, dtype=float), where=denom > 0)
    return f1.mean(axis=-1)


def _bootstrap(t: np.ndarray, a: np.ndarray, n_labels: int, units: np.ndarray, resamples: int = RESAMPLES,
               seed: int = 0) -> np.ndarray:
    """Macro-F1 of ``resamples`` resamples of the units (a unit: each sample its own, or a cluster's
    samples together), drawn with replacement by a numpy generator seeded ``seed``."""
    k = n_labels * (n_labels + 1)
    n_units = int(units.max()) + 1 if len(units) else 0
    per_unit = np.zeros((n_units, k))  # each unit's confusion counts, flattened
    np.add.at(per_unit, (units, t * (n_labels + 1) + a), 1)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(n_units, 1)))  # resamples at a time, bounded memory
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        draws = rng.integers(0, n_units, size=(m, n_units))
        counts = np.bincount((draws + n_units * np.arange(m)[:, None]).ravel(),
                             minlength=m * n_units).reshape(m, n_units)
        confusion = (counts @ per_unit).reshape(m, n_labels, n_labels + 1)
        out[start:start + m] = _macro_f1(confusion)
    return out


def class_report(targets: Sequence[Any], answers: Sequence[str | None], clusters: Sequence[Any] | None = None,
                 resamples: int = RESAMPLES, seed: int = 0) -> ClassReport:
    """Per-label precision, recall, F1 and support (sklearn's precision_recall_fscore_support, with
    zero_division=0, over the sorted distinct targets), the macro-F1 with a 95% percentile bootstrap
    interval, and the confusion matrix.

    ``answers``: what the model answered per sample (compared after stripping whitespace; None: no
    answer). ``clusters``: per sample, the group it belongs to (e.g. samples made from one source
    document); the interval then resamples whole clusters, as samples of a cluster are not
    independent."""
    import pandas as pd
    from sklearn.metrics import precision_recall_fscore_support

    if len(targets) != len(answers) or (clusters is not None and len(clusters) != len(targets)):
        raise ValueError(f"class_report: {len(targets)} targets, {len(answers)} answers"
                         + (f", {len(clusters)} clusters" if clusters is not None else ""))
    labels, t, a = _codes(targets, answers)
    other = OTHER
    while other in labels:  # a label that reads "(other)" keeps its name; the column gets another
        other += "*"
    y_true = [labels[i] for i in t]
    y_pred = [labels[i] if i < len(labels) else other for i in a]
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    counts = np.zeros((len(labels), len(labels) + 1), dtype=np.int64)
    np.add.at(counts, (t, a), 1)
    confusion = pd.DataFrame(counts, index=pd.Index(labels, name="target"),
                             columns=pd.Index(labels + [OTHER], name="answer"))
    if clusters is None:
        units, n_clusters = np.arange(len(t)), None
    else:
        _, units = np.unique(np.array([str(c) for c in clusters]), return_inverse=True)
        n_clusters = int(units.max()) + 1 if len(units) else 0
    if len(t):
        low, high = np.percentile(_bootstrap(t, a, len(labels), units, resamples, seed), [2.5, 97.5])
    else:
        low = high = float("nan")
    return ClassReport(labels=labels, precision=[float(x) for x in precision], recall=[float(x) for x in recall],
                       f1=[float(x) for x in f1], support=[int(x) for x in support],
                       macro_f1=float(np.mean(f1)) if len(labels) else float("nan"),
                       macro_f1_low=float(low), macro_f1_high=float(high), confusion=confusion, n=len(t),
                       clusters=n_clusters)


def markdown(report: ClassReport) -> str:
    """label | precision | recall | F1 | support, then the macro-F1 with its interval."""
    rows = ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, p, r, f, s in zip(report.labels, report.precision, report.recall, report.f1, report.support):
        rows.append(f"| {label.replace('|', chr(92) + '|')} | {p:.3f} | {r:.3f} | {f:.3f} | {s} |")
    over = f"{report.clusters} clusters" if report.clusters is not None else f"{report.n} samples"
    line = (f"macro-F1 {report.macro_f1:.3f} [{report.macro_f1_low:.3f}, {report.macro_f1_high:.3f}] "
            f"(95% bootstrap interval, resampling {over})")
    if report.other:
        line += f"; {report.other} answer{'s' if report.other > 1 else ''} outside the label set"
    return "\n".join(rows) + "\n\n" + line
