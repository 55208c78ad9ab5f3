"""A report's per-class metrics (against scikit-learn's), the prompt and example answers it reads
from inspect logs written with inspect's own log API, and what its plots show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from cruijff.report.classes import OTHER, class_report, is_classification, markdown

LABELS = ["negative", "neutral", "positive"]


def _answers(targets, rng, right=0.7):
    """Mostly the target; else another label, a label with stray whitespace, an answer outside the
    label set, or none."""
    out = []
    for t in targets:
        u = rng.random()
        out.append(t if u < right else f" {t}\n" if u < right + 0.05 else
                   rng.choice(LABELS) if u < 0.9 else "maybe" if u < 0.95 else None)
    return out


def _sklearn_view(targets, answers):
    return [a.strip() if a is not None and a.strip() in LABELS else OTHER for a in answers]


def test_per_class_metrics_equal_sklearns():
    rng = np.random.default_rng(3)
    targets = [str(x) for x in rng.choice(LABELS, 200, p=[0.5, 0.2, 0.3])]
    answers = _answers(targets, rng)
    report = class_report(targets, answers)
    y_pred = _sklearn_view(targets, answers)
    p, r, f, s = precision_recall_fscore_support(targets, y_pred, labels=LABELS, zero_division=0)
    assert report.labels == LABELS
    assert report.precision == pytest.approx(list(p)) and report.recall == pytest.approx(list(r))
    assert report.f1 == pytest.approx(list(f)) and report.support == list(s)
    macro = f1_score(targets, y_pred, labels=LABELS, average="macro", zero_division=0)
    assert report.macro_f1 == pytest.approx(macro)
    assert report.macro_f1_low < report.macro_f1 < report.macro_f1_high
    # rows: the target; columns: the labels, then every answer outside them
    expected = confusion_matrix(targets, y_pred, labels=LABELS + [OTHER])[:len(LABELS)]
    assert list(report.confusion.columns) == LABELS + [OTHER]
    assert (report.confusion.values == expected).all()
    assert report.other == sum(1 for a in y_pred if a == OTHER) > 0
    text = markdown(report)
    assert text.splitlines()[0] == "| label | precision | recall | F1 | support |"
    assert f"| negative | {p[0]:.3f} | {r[0]:.3f} | {f[0]:.3f} | {s[0]} |" in text
    assert text.splitlines()[-1].startswith(
        f"macro-F1 {macro:.3f} [{report.macro_f1_low:.3f}, {report.macro_f1_high:.3f}] ")


def test_the_macro_f1_interval_is_a_percentile_bootstrap_of_sklearns_macro_f1():
    rng = np.random.default_rng(5)
    targets = [str(x) for x in rng.choice(LABELS, 80)]
    answers = _answers(targets, rng)
    report = class_report(targets, answers, resamples=300)
    t, y = np.array(targets), np.array(_sklearn_view(targets, answers))
    draws = np.random.default_rng(0).integers(0, len(t), size=(300, len(t)))  # seed 0, one row a resample
    boot = [f1_score(t[d], y[d], labels=LABELS, average="macro", zero_division=0) for d in draws]
    low, high = np.percentile(boot, [2.5, 97.5])
    assert (report.macro_f1_low, report.macro_f1_high) == pytest.approx((low, high))


def test_clustered_samples_get_a_wider_interval():
    """Samples from one source are right or wrong together: resampling the clusters, not the
    samples, shows how little 30 clusters tell."""
    rng = np.random.default_rng(11)
    targets, answers, clusters = [], [], []
    for c in range(30):
        label, right = str(rng.choice(LABELS)), rng.random() < 0.6
        wrong = LABELS[(LABELS.index(label) + 1) % 3]
        targets += [label] * 10
        answers += [label if right else wrong] * 10
        clusters += [f"doc{c}"] * 10
    plain, clustered = class_report(targets, answers), class_report(targets, answers, clusters=clusters)
    assert plain.macro_f1 == clustered.macro_f1
    for r in (plain, clustered):
        assert r.macro_f1_low <= r.macro_f1 <= r.macro_f1_high
    assert clustered.macro_f1_high - clustered.macro_f1_low > 1.5 * (plain.macro_f1_high - plain.macro_f1_low)
    assert clustered.clusters == 30 and "resampling 30 clusters" in markdown(clustered)


def test_a_task_is_classification_when_few_labels_repeat():
    assert is_classification(["a", "b", "a", "b"])
    assert is_classification(["yes ", "no", "yes", "no"])
    assert not is_classification(["a", "a", "a", "a"])  # one label
    assert not is_classification(["a", "b", "c", "a"])  # labels that hardly repeat: free-form answers
    assert not is_classification([str(i % 25) for i in range(1000)])  # more than 20 labels


# -- inspect logs --------------------------------------------------------------------------------

SYSTEM = "You label the sentiment of a review: negative, neutral or positive."
INSTRUCTION = "Answer with one word. " * 8  # long enough for inspect to store it as an attachment


def _log(path, samples, task="sentiment"):
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSpec, write_eval_log

    ids = [s.id for s in samples]
    log = EvalLog(eval=EvalSpec(created="2026-12-01T00:00:00+00:00", task=task, model="hf/m", config=EvalConfig(),
                                dataset=EvalDataset(name="d", samples=len(ids), sample_ids=ids)),
                  status="success", samples=samples)
    write_eval_log(log, str(path))
    return str(path)


def _sample(i, review, target, answer, events=True, messages=True, scorer_answer=True):
    from inspect_ai.event import ModelEvent
    from inspect_ai.log import EvalSample
    from inspect_ai.model import (ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, GenerateConfig,
                                  ModelOutput)
    from inspect_ai.scorer import Score

    prompt = [ChatMessageSystem(content=SYSTEM), ChatMessageUser(content=f"{INSTRUCTION}\nReview: {review}")]
    output = ModelOutput.from_content("hf/m", f"{answer}\n")
    event = ModelEvent(model="hf/m", input=prompt, tools=[], tool_choice="none", config=GenerateConfig(),
                       output=output)
    return EvalSample(id=i, epoch=1, input=f"Review: {review}", target=target,
                      messages=prompt + [ChatMessageAssistant(content=answer)] if messages else [],
                      output=output, events=[event] if events else [],
                      scores={"match": Score(value="C" if answer == target else "I",
                                             answer=answer if scorer_answer else None)})


def test_prompt_of_is_what_the_model_received(tmp_path):
    from cruijff.report.examples import prompt_of

    expected = f"system: {SYSTEM}\nuser: {INSTRUCTION}\nReview: fine food"
    log = _log(tmp_path / "a.eval", [_sample(7, "fine food", "positive", "positive"),
                                     _sample(8, "cold soup", "negative", "neutral")])
    assert prompt_of(log) == expected  # the first sample's model call
    assert prompt_of(log, 8) == f"system: {SYSTEM}\nuser: {INSTRUCTION}\nReview: cold soup"
    # without a model event: the messages, less the model's answer
    log = _log(tmp_path / "b.eval", [_sample(1, "fine food", "positive", "positive", events=False)])
    assert prompt_of(log) == expected
    # with neither: the sample's input
    log = _log(tmp_path / "c.eval", [_sample(1, "fine food", "positive", "positive", events=False, messages=False)])
    assert prompt_of(log) == "Review: fine food"
    assert prompt_of(log, 99) is None
    assert prompt_of(tmp_path / "missing.eval") is None


def test_example_outputs_show_the_samples_asked_for(tmp_path):
    from cruijff.report.examples import example_outputs, markdown_examples

    reviews = {i: f"review number {i} " + "with many words " * 12 for i in range(1, 9)}
    base = _log(tmp_path / "base.eval", [_sample(i, reviews[i], "positive", "neutral") for i in range(1, 9)])
    tuned = _log(tmp_path / "tuned.eval", [_sample(i, reviews[i], "positive", "positive" if i < 5 else "negative",
                                                   scorer_answer=i != 6) for i in range(1, 9)])
    rows = example_outputs(base, tuned, [3, 42, 1, 2], [6, 5, 7], k=2)  # 42 is in neither log
    assert [(r["case"], r["id"]) for r in rows] == [("right only after fine-tuning", 3), ("right only after fine-tuning", 1),
                                                     ("wrong in both", 6), ("wrong in both", 5)]
    first = rows[0]
    assert first["target"] == "positive" and first["base_answer"] == "neutral" and first["finetuned_answer"] == "positive"
    assert first["input"].startswith("Review: review number 3 with many words") and len(first["input"]) == 120
    assert "\n" not in first["input"]
    assert rows[2]["finetuned_answer"] == "negative\n"  # no scorer answer: the output's completion
    table = markdown_examples(rows)
    assert table.splitlines()[0] == "| case | id | input | target | base | fine-tuned |"
    assert len(table.splitlines()) == 2 + 4
    assert markdown_examples([]) == ""


# -- plots ---------------------------------------------------------------------------------------

def _scores():
    """Four runs over lr x rank, two epochs each; epoch 0 scores 0.1 * run number, epoch 1 twice that."""
    rows = []
    for n, (lr, rank) in enumerate([("1e-05", "8"), ("1e-05", "16"), ("0.0001", "8"), ("0.0001", "16")], 1):
        for epoch in (0, 1):
            rows.append({"run": f"r{n}", "checkpoint": f"epoch_{epoch}", "epoch": epoch, "task": "t",
                         "score": 0.1 * n * (epoch + 1), "lr": lr, "rank": rank, "model": "m"})
    rows.append({"run": "base", "checkpoint": "base", "epoch": -1, "task": "t", "score": 0.05, "model": "m", "lr": None,
                 "rank": None})
    return pd.DataFrame(rows)


def test_the_heatmap_shows_each_runs_selected_checkpoint(tmp_path):
    from cruijff.report.plots import plot_heatmap

    scores = _scores()
    last = plot_heatmap(scores, ["lr", "rank"], tmp_path)
    assert list(last.index) == [1e-05, 1e-04] and list(last.columns) == [8, 16]  # numeric order
    assert last.loc[1e-05, 8] == pytest.approx(0.2) and last.loc[1e-04, 16] == pytest.approx(0.8)
    picked = plot_heatmap(scores, ["lr", "rank"], tmp_path, selected={"r1": "epoch_0", "r2": "epoch_1",
                                                                      "r3": "epoch_0", "r4": "epoch_0"})
    assert picked.loc[1e-05, 8] == pytest.approx(0.1) and picked.loc[1e-05, 16] == pytest.approx(0.4)
    assert picked.loc[1e-04, 8] == pytest.approx(0.3) and picked.loc[1e-04, 16] == pytest.approx(0.4)
    assert (tmp_path / "heatmap.png").stat().st_size > 0
    assert plot_heatmap(scores, ["lr"], tmp_path) is None


def test_runs_with_identical_scores_stay_distinguishable():
    from cruijff.report.plots import accuracy_figure

    scores = _scores()
    scores.loc[scores["run"] == "r2", "score"] = scores.loc[scores["run"] == "r1", "score"].values
    fig = accuracy_figure(scores[scores["run"].isin(["r1", "r2", "base"])])
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    r1, r2 = lines["r1"], lines["r2"]
    assert list(r1.get_ydata()) == list(r2.get_ydata())
    assert r1.get_marker() != r2.get_marker() and r1.get_markersize() > r2.get_markersize()
    assert "seeds" not in ax.get_ylabel()  # no seed groups, no band
    assert not [c for c in ax.collections if type(c).__name__.endswith("PolyCollection")]


def test_the_seed_band_is_named_where_there_is_one():
    from cruijff.report.plots import accuracy_figure

    fig = accuracy_figure(_scores(), groups={"lr=1e-05": ["r1", "r2"]})
    ax = fig.axes[0]
    assert ax.get_ylabel() == "score (band: spread over seeds)"
    assert [c for c in ax.collections if type(c).__name__.endswith("PolyCollection")]
    markers = [line.get_marker() for line in ax.get_lines() if not line.get_label().startswith(("_", "base"))]
    assert len(markers) == 3 and len(set(markers)) == 3  # r3, r4 and the group


def test_the_confusion_matrix_plot(tmp_path):
    from cruijff.report.plots import plot_confusion

    rng = np.random.default_rng(1)
    targets = [str(x) for x in rng.choice(LABELS, 60)]
    plot_confusion(class_report(targets, _answers(targets, rng), resamples=50), "sentiment", tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_csv_names_the_model_and_only_the_overrides_that_change_the_fine_tune(tmp_path):
    """A fine-tuned row names its model (as the base rows do), and launcher keys (detach, cluster,
    eval.*, hydra.*, experiment.name, overwrite, ...) are not hyperparameter columns."""
    from test_stats import A0, A1, BASE, make_sweep

    launch = ["detach=true", "cluster=slurm", "dry_run=false", "overwrite=true", "experiment.name=s",
              "eval.limit=5", "eval.epochs=[0]", "hydra.launcher.timeout_min=5", "training=smoke"]
    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": A0}}, "b": {0: {"exact_match": A1}}},
                           {"exact_match": BASE},
                           overrides={"a": ["optimizer.lr=1e-3", *launch], "b": ["optimizer.lr=1e-4", *launch]})
    (sweep_dir / "a" / ".hydra").mkdir()
    (sweep_dir / "a" / ".hydra" / "config.yaml").write_text(
        "model:\n  name: tiny_llama\n  note: ${not_a_key}\ndataset:\n  prompt: '${x}'\n")
    from cruijff.report import report_sweep

    report_sweep(sweep_dir)
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert set(summary["model"]) == {"tiny_llama"}, summary[["run", "model"]]
    params = [c for c in summary.columns if "." in c or c in ("detach", "cluster", "dry_run", "overwrite", "training")]
    assert params == ["optimizer.lr", "training"], list(summary.columns)
