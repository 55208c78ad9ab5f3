"""Data as users hold it: JSON, JSONL, CSV, TSV, Parquet, save_to_disk; splits by key, file, column or
seeded fractions; instruct records under any field names, with a system prompt, and chats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import compose_config, launch

FIELDS = ["dataset=file", "dataset.fields.input=text", "dataset.fields.output=label"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The embedded capitalization data, as a user might hold it: one table with a split column in
    each format (a save_to_disk dir too), one JSONL file per split, a save_to_disk dir of the splits, and chats
    of two turns with a system prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    from cruijff import assets

    d = tmp_path_factory.mktemp("data")
    data = json.loads(assets.capitalization_file().read_text())
    rows = [{"text": r["input"], "label": r["output"], "part": split} for split, v in data.items() for r in v]
    (d / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "all.json").write_text(json.dumps(rows))
    for name, sep in (("all.csv", ","), ("all.tsv", "\t")):
        with open(d / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label", "part"], delimiter=sep)
            w.writeheader()
            w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), d / "all.parquet")
    for split, v in data.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps({"text": r["input"], "label": r["output"]}) + "\n"
                                                  for r in v))
    DatasetDict({k: Dataset.from_list([{"text": r["input"], "label": r["output"]} for r in v])
                 for k, v in data.items()}).save_to_disk(str(d / "saved"))
    Dataset.from_list(rows).save_to_disk(str(d / "saved_table"))  # one table with the split column
    chats = [{"messages": [{"role": "system", "content": "Capitalize the word."},
                           {"role": "user", "content": "paris"}, {"role": "assistant", "content": "Paris"},
                           {"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}],
              "part": split} for split, v in data.items() for r in v]
    (d / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    return d


def _records(*overrides: str) -> dict:
    from cruijff.config.data import dataset_file

    return json.loads(dataset_file(compose_config(*overrides)).read_text())


def test_every_format_and_split_source_gives_the_same_records(files):
    from cruijff import assets

    truth = {k: [{"text": r["input"], "label": r["output"]} for r in v]
             for k, v in json.loads(assets.capitalization_file().read_text()).items()}
    by_column = ["dataset.split_column=part"]
    for name in ("all.jsonl", "all.json", "all.csv", "all.tsv", "all.parquet", "saved_table"):
        assert _records(*FIELDS, f"dataset.path={files / name}", *by_column) == truth, name
    assert _records(*FIELDS, f"dataset.path={files / 'saved'}") == truth
    assert _records(*FIELDS, f"dataset.path={files / 'train.jsonl'}", f"dataset.validation={files / 'validation.jsonl'}",
                    f"dataset.test={files / 'test.jsonl'}") == truth


def test_fractions_split_one_list_the_same_way_every_time_and_by_seed(files):
    args = [*FIELDS, f"dataset.path={files / 'all.csv'}", "dataset.split=[0.8,0.1,0.1]"]
    one, again, other = _records(*args), _records(*args), _records(*args, "dataset.split_seed=1")
    assert one == again and one != other
    assert [len(one[k]) for k in ("train", "validation", "test")] == [960, 120, 120]
    every = [r["text"] for k in one for r in one[k]]
    assert len(every) == len(set(every)) == 1200  # disjoint, and every record in one split


@pytest.mark.parametrize("content, args, message", [
    ('{"text": "a", "label": "A"}\nnot json\n', [], "dataset.path='{f}': line 2 is not JSON: Expecting value at column 1"),
    ('{"text": "a", "label": "A", "part": "train"}\n{"text": "b", "part": "test"}\n',
     ["dataset.split_column=part"], "dataset.fields.output='label': data.jsonl line 2 has no 'label' (it has: "
                                    "text, part)"),
    ('{"text": "a", "label": " ", "part": "train"}\n', ["dataset.split_column=part"],
     "dataset.fields.output='label': data.jsonl line 1 has an empty 'label'"),
    ('{"text": "a", "label": "A", "part": "dev"}\n', ["dataset.split_column=part"],
     "dataset.split_column='part': data.jsonl line 1 has part='dev'; each record's part must be one of train, "
     "validation, test"),
    ('{"text": "a", "label": 1.5, "part": "train"}\n', ["dataset.split_column=part"],
     "dataset.fields.output='label': data.jsonl line 1 has label=1.5, not text (write it as text in the file)"),
    ('{"text": "a", "label": "A", "part": "train"}\n', ["dataset.split_column=part", "dataset.split=[0.8,0.1,0.1]"],
     "dataset.split_column='part': and dataset.split both split data.jsonl: choose one way"),
    ('{"text": "a", "label": "A"}\n{"text": "b", "label": "B"}\n{"text": "c", "label": "C"}\n',
     ["dataset.split=[0.8,0.1,0.1]"], "dataset.split=[0.8, 0.1, 0.1]: data.jsonl has 3 records: too few for a "
                                      "validation split"),
    (b'{"text": "caf\xe9", "label": "A"}\n', ["dataset.split=[0.8,0.1,0.1]"],
     "dataset.path='{f}': is not UTF-8 text (invalid continuation byte at byte 13); save it as UTF-8"),
    ('{"text": "a", "label": "A"}\n', [], "dataset.split=None: data.jsonl holds one list of records: name its "
     "splits with dataset.split=[0.8,0.1,0.1] (fractions, shuffled with dataset.split_seed), "
     "dataset.split_column=<column>, or dataset.validation/dataset.test files"),
])
def test_bad_data_is_one_line_naming_the_file_the_record_and_the_field(tmp_path, content, args, message):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = launch(*FIELDS, f"dataset.path={data}", *args, "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines() == ["cruijff: error: " + message.format(f=data)]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("roles, message", [
    (["user"], "line 1 must end with an assistant turn (the answer) after a user turn"),
    (["user", "system", "assistant"], "line 1 message 1 is a system turn where a assistant turn comes"),
    (["user", "user", "assistant"], "line 1 message 1 is a user turn where a assistant turn comes"),
    (["assistant", "user", "assistant"], "line 1 message 0 is a assistant turn where a user turn comes"),
])
def test_a_chat_torchtune_would_refuse_is_refused_before_anything_runs(tmp_path, roles, message):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": r, "content": "x"} for r in roles], "part": "train"}) + "\n")
    proc = launch("dataset=chat", f"dataset.path={data}", "dataset.split_column=part", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0].startswith(
        f"cruijff: error: dataset.fields.messages='messages': chats.jsonl {message}"), proc.stderr


def test_a_source_edited_in_place_is_read_again_even_with_its_old_size_and_mtime(files, tmp_path):
    """The same size, the mtime set back (touch -r, a restored copy): the content decides."""
    import os
    import shutil

    data = tmp_path / "all.jsonl"
    shutil.copy(files / "all.jsonl", data)
    args = [*FIELDS, f"dataset.path={data}", "dataset.split_column=part"]
    before = _records(*args)
    st = data.stat()
    data.write_text(data.read_text().replace('"label": "K', '"label": "Q'))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_size == st.st_size and data.stat().st_mtime_ns == st.st_mtime_ns
    after = _records(*args)
    assert after != before and any(r["label"].startswith("Q") for r in after["train"])


def test_one_file_as_validation_or_as_test_is_two_datasets(files, tmp_path):
    """A file's role is part of the conversion's key: it is never read as the other split."""
    base = [*FIELDS, f"dataset.path={files / 'train.jsonl'}"]
    as_test = _records(*base, f"dataset.test={files / 'test.jsonl'}")
    assert set(as_test) == {"train", "test"}
    proc = launch(*base, f"dataset.validation={files / 'test.jsonl'}", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2 and "gives no test records" in proc.stderr


def test_an_instruct_record_is_asked_its_input_whatever_else_it_holds(tmp_path):
    """Training reads input/output (instruct_dataset); so does the eval, a stray `messages` field or not."""
    from cruijff.evaluate.backend import exact_match_task

    data = tmp_path / "both.json"
    record = {"input": "Capitalize: w", "output": "W", "messages": [{"role": "user", "content": "unrelated"}]}
    data.write_text(json.dumps({"train": [record], "test": [record]}))
    sample = exact_match_task(str(data)).dataset[0]
    assert (sample.input, sample.target) == ("Capitalize: w", "W")


def test_a_chat_that_does_not_end_with_the_answer_is_refused(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "part": "train"}) + "\n")
    proc = launch("dataset=chat", f"dataset.path={data}", "dataset.split_column=part", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "cruijff: error: dataset.fields.messages='messages': chats.jsonl line 1 must end with an assistant turn (the "
        "answer) after a user turn"]


def test_a_chat_is_prompted_at_eval_as_training_saw_its_last_turn(files, tiny_model_dir):
    """Several turns and a system prompt: the eval prompt's token ids are exactly those training put
    before the last answer, and training learns every answer (its mask)."""
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from omegaconf import OmegaConf
    from torchtune import config as tt_config
    from torchtune.data import OpenAIToMessages

    from cruijff import finetune
    from cruijff.evaluate.backend import chat_messages

    cfg = compose_config("dataset=chat", f"dataset.path={files / 'chats.jsonl'}", "dataset.split_column=part")
    data = _records("dataset=chat", f"dataset.path={files / 'chats.jsonl'}", "dataset.split_column=part")
    conf = finetune.render(cfg, Path("/tmp/unused"), tiny_model_dir, Path("/tmp/data.json"))
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    api = HuggingFaceAPI(str(tiny_model_dir), device="cpu", do_sample=False)
    to_messages = OpenAIToMessages(train_on_input=False)
    for record in data["test"][:20]:
        tokens, mask = tok.tokenize_messages(to_messages(record)["messages"])
        prompt = api.tokenizer(api.hf_chat(chat_messages(record["messages"][:-1]), []))["input_ids"]
        assert tokens[:len(prompt)] == prompt, record
        answer = tok.encode(record["messages"][-1]["content"], add_bos=False, add_eos=False, trim_leading_whitespace=True)
        assert tokens[len(prompt):len(prompt) + len(answer)] == answer
        trained = [t for t, m in zip(tokens, mask) if not m]
        first = tok.encode("Paris", add_bos=False, add_eos=False, trim_leading_whitespace=True)
        assert trained[:len(first)] == first  # the first answer is learned too


def test_each_format_trains_and_evaluates_end_to_end_with_the_same_scores(files, tmp_path, tiny_model_dir):
    """One sweep over the same records as JSONL, CSV, Parquet and a save_to_disk dir: every run
    of the same data trains and scores alike; a chat of two turns with a system prompt (JSONL) trains
    and is evaluated on its last turn."""
    formats = ("all.jsonl", "all.csv", "all.parquet", "saved_table")
    proc = launch("-m", "experiment.name=formats", "training=smoke", "peft.lora_rank=8", "optimizer.lr=1e-3", *FIELDS,
                  "dataset.split_column=part", "dataset.path=" + ",".join(str(files / n) for n in formats),
                  cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "outputs" / "formats" / "summary.csv")
    tuned = summary[summary["run"] != "base"]
    assert len(tuned) == 4 and tuned["score"].nunique() == 1, tuned
    assert (summary["run"] == "base").sum() == 1  # the same records: one base control
    (saved_cell,) = (tmp_path / "outputs" / "formats").glob("*path-saved-table/eval/epoch_0/results.json")
    assert json.loads(saved_cell.read_text())["tasks"]["exact_match"]["value"] == tuned["score"].iloc[0]
    losses = [json.loads(p.read_text())["epochs"][0]["mean_loss"]
              for p in (tmp_path / "outputs" / "formats").glob("*/run.json")]
    assert len(losses) == 4 and len(set(losses)) == 1  # the same records, in the same order: the same training
    chat = launch("experiment.name=chat", "training=smoke", "dataset=chat", f"dataset.path={files / 'chats.jsonl'}",
                  "dataset.split_column=part", cwd=tmp_path, timeout=1200)
    assert chat.returncode == 0, chat.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "chat").glob("*/finetune.yaml")).parent
    assert "torchtune.datasets.chat_dataset" in (run_dir / "finetune.yaml").read_text()
    cells = list(run_dir.glob("eval/epoch_0/results.json"))
    assert cells and json.loads(cells[0].read_text())


def _one_line_refusal(tmp_path, *args: str) -> str:
    """A dry run's refusal: exit 2, one line, nothing written to outputs/; the line, less its prefix."""
    proc = launch(*args, "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cruijff: error: "), proc.stderr
    assert not (tmp_path / "outputs").exists()
    return lines[0][len("cruijff: error: "):]


def _splits_file(path: Path, n: int = 4, **extra) -> Path:
    """A JSON file of splits, read as it is: n train records (one naming the file: its own content), 2 test ones."""
    path.write_text(json.dumps({"train": [{"input": f"w{i} {path}", "output": f"W{i}"} for i in range(n)],
                                "test": [{"input": "t0", "output": "T0"}, {"input": "t1", "output": "T1"}], **extra}))
    return path


def test_a_json_file_of_splits_is_read_from_a_frozen_copy_an_edit_cannot_reach(tmp_path):
    """The stages read a copy in the cache, byte for byte the user's file: an edit made while a
    launch runs changes neither the records trained on nor the targets scored against."""
    from cruijff.config import config_hash, resolve_paths
    from cruijff.evaluate.backend import exact_match_task

    user = _splits_file(tmp_path / "mine.json")
    cfg = compose_config("dataset=json", f"dataset.path={user}")
    data = resolve_paths(cfg, build=False)[1]
    assert data != user and data.read_bytes() == user.read_bytes()  # the same bytes: the same run identity as before
    run_hash = config_hash(cfg, *resolve_paths(cfg, build=False))
    user.write_text(user.read_text().replace('"T0"', '"EDITED"'))
    assert [s.target for s in exact_match_task(str(data)).dataset] == ["T0", "T1"]
    assert config_hash(cfg, resolve_paths(cfg, build=False)[0], data) == run_hash
    edited = resolve_paths(cfg, build=False)[1]  # a launch after the edit: another dataset, another run
    assert edited != data and "EDITED" in edited.read_text() and config_hash(cfg) != run_hash


def test_an_edit_between_hashing_and_reading_is_kept_under_its_own_key(tmp_path, monkeypatch):
    """The key is the hash of the very bytes converted: a stale hash (the file changed after it was
    taken) finds nothing, and what is read is stored under the key of what was read."""
    import hashlib

    from cruijff.config import data as data_mod

    user = _splits_file(tmp_path / "race.json")
    stale = hashlib.sha256(user.read_bytes()).hexdigest()
    user.write_text(user.read_text().replace('"T0"', '"NEW"'))
    monkeypatch.setattr(data_mod, "_content", lambda source: stale)  # hashed before the edit
    out = data_mod.dataset_file(compose_config("dataset=json", f"dataset.path={user}"))
    options = data_mod._section(compose_config("dataset=json", f"dataset.path={user}"))[2]
    assert "NEW" in out.read_text()
    assert out.stem == data_mod._key({"path": hashlib.sha256(out.read_bytes()).hexdigest()}, options)
    assert out.stem != data_mod._key({"path": stale}, options)


def test_a_json_file_of_splits_reads_as_every_other_format(tmp_path):
    """A byte-order mark, a whole number as the answer (its digits): as JSONL and CSV read them."""
    user = tmp_path / "bom.json"
    user.write_bytes(b"\xef\xbb\xbf" + json.dumps({"train": [{"input": "one", "output": 1}],
                                                   "test": [{"input": "two", "output": "2"}]}).encode())
    assert _records("dataset=json", f"dataset.path={user}") == {"train": [{"input": "one", "output": "1"}],
                                                                 "test": [{"input": "two", "output": "2"}]}


@pytest.mark.parametrize("content, message", [
    ({"train": [{"input": "a", "output": "A"}, {"input": "b"}], "test": [{"input": "c", "output": "C"}]},
     "train[1] has no 'output' (it has: input)"),
    ({"train": [{"input": "a", "output": "A"}], "test": [{"input": "c", "output": 1.5}]},
     "test[0] has output=1.5, not text (write it as text in the file)"),
    ({"train": [{"input": "a", "output": "A"}], "test": []}, "its 'test' split is empty"),
])
def test_a_json_file_of_splits_names_the_split_record_and_field(tmp_path, content, message):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(content))
    assert _one_line_refusal(tmp_path, "dataset=json", f"dataset.path={data}").startswith(
        f"dataset.path='{data}': {message}")


def test_a_csv_field_of_any_size_is_read_and_a_broken_quote_is_one_line(tmp_path):
    big = "x" * (200 * 1024)
    data = tmp_path / "big.csv"
    data.write_text(f"input,output,part\n{big},A,train\nb,B,test\n")
    records = _records(f"dataset.path={data}", "dataset=file", "dataset.split_column=part")
    assert records["train"][0]["input"] == big
    data.write_text('input,output,part\na,A,train\n"b,B,test\n')
    assert _one_line_refusal(tmp_path, "dataset=file", f"dataset.path={data}", "dataset.split_column=part") == (
        f"dataset.path='{data}': line 3 is not CSV (unexpected end of data: a quote opened and not closed, or text "
        "after a closing quote)")


def test_tsv_text_is_read_as_written_quotes_and_all(tmp_path):
    data = tmp_path / "q.tsv"
    data.write_text('input\toutput\tpart\n"quoted" word\t"A"\ttrain\nb\tit\'s "B\ttest\n')
    records = _records("dataset=file", f"dataset.path={data}", "dataset.split_column=part")
    assert records == {"train": [{"input": '"quoted" word', "output": '"A"'}],
                       "test": [{"input": "b", "output": 'it\'s "B'}]}


@pytest.mark.parametrize("split", ["[0.8,0.1,nan]", "[nan,0.5,0.5]", "[inf,0.5,0.5]"])
def test_fractions_that_are_not_finite_are_refused(tmp_path, split):
    data = tmp_path / "d.jsonl"
    data.write_text('{"input": "a", "output": "A"}\n')
    assert _one_line_refusal(tmp_path, "dataset=file", f"dataset.path={data}", f"dataset.split={split}").endswith(
        "three fractions (train, validation, test) that sum to 1, like [0.8, 0.1, 0.1]; nan and inf are no fractions")


def test_a_saved_dataset_of_one_train_split_is_split_by_fractions_and_its_empty_split_named(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"input": f"w{i}", "output": f"W{i}"} for i in range(20)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "one"))
    records = _records("dataset=file", f"dataset.path={tmp_path / 'one'}", "dataset.split=[0.8,0.1,0.1]")
    assert [len(records[k]) for k in ("train", "validation", "test")] == [16, 2, 2]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list([])}).save_to_disk(str(tmp_path / "e"))
    assert _one_line_refusal(tmp_path, "dataset=file", f"dataset.path={tmp_path / 'e'}").startswith(
        f"dataset.path='{tmp_path / 'e'}': its 'test' split is empty")


def test_a_saved_class_label_of_no_label_is_refused_not_made_text(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"input": Value("string"), "output": ClassLabel(names=["neg", "pos"])})
    DatasetDict({"train": Dataset.from_list([{"input": "a", "output": 1}], features=features),
                 "test": Dataset.from_list([{"input": "b", "output": 0}, {"input": "c", "output": -1}],
                                           features=features)}).save_to_disk(str(tmp_path / "glue"))
    assert _one_line_refusal(tmp_path, "dataset=file", f"dataset.path={tmp_path / 'glue'}") == (
        "dataset.fields.output='output': glue test[1] has output=-1, Hugging Face's \"no label\" (a split saved "
        "without its labels): leave the split out or give it labels")


@pytest.mark.parametrize("content, args, message", [
    ('{"input": "a", "output": "A", "part": "train"}\n', ["dataset.split_column=nosuch"],
     "dataset.split_column='nosuch': d.jsonl line 1 has no column 'nosuch' (its columns: input, output, part)"),
    ('part,input,output\ntrain,a,A\ntest,b\n', ["dataset.split_column=part"],
     "dataset.fields.output='output': d.csv line 3 has no 'output' (the line has fewer fields than its header)"),
    ('input,output,part\na,A,train\nb,B\n', ["dataset.split_column=part"],
     "dataset.split_column='part': d.csv line 3 has no column 'part' (its columns: input, output)"),
    ('input,output,part\na,A,train\nb,,test\n', ["dataset.split_column=part"],
     "dataset.fields.output='output': d.csv line 3 has an empty 'output'"),
    ('{"input": "a", "output": null, "part": "train"}\n', ["dataset.split_column=part"],
     "dataset.fields.output='output': d.jsonl line 1 has output=null, not text"),
])
def test_a_missing_column_or_field_is_named_as_it_is(tmp_path, content, args, message):
    name = "d.jsonl" if content.startswith("{") else "d.csv"
    (tmp_path / name).write_text(content)
    assert _one_line_refusal(tmp_path, "dataset=file", f"dataset.path={tmp_path / name}", *args) == message


@pytest.mark.parametrize("messages, message", [
    ([("user", " "), ("assistant", "A")], "line 1 message 0 has an empty user content"),
    ([("system", ""), ("user", "q"), ("assistant", "A")], "line 1 message 0 has an empty system content"),
    ([("user", "q"), ("assistant", ""), ("user", "q"), ("assistant", "A")],
     "line 1 message 1 has an empty assistant content"),
])
def test_a_chat_turn_with_nothing_in_it_is_refused_as_an_empty_input_is(tmp_path, messages, message):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in messages], "part": "train"}) + "\n")
    assert _one_line_refusal(tmp_path, "dataset=chat", f"dataset.path={data}", "dataset.split_column=part") == (
        f"dataset.fields.messages='messages': chats.jsonl {message}")


def test_test_records_that_are_train_records_are_warned_about_once(tmp_path):
    """The training file as the test file too, or the same record on both sides of a split: one
    line on stderr, worked out once per dataset and kept with it; the launch goes on."""
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"input": f"leak{i}", "output": "A"}) + "\n" for i in range(6)))
    proc = launch("dataset=file", f"dataset.path={data}", f"dataset.test={data}", "training.batch_size=2",
                  "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert warnings == ["cruijff: warning: dataset: 6 of 6 test records are also in train (by input); scores on "
                        "them measure memory, not generalisation"]
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"train": [{"input": "x", "output": "X"}, {"input": "y", "output": "Y"}],
                               "test": [{"input": "x", "output": "X"}, {"input": "z", "output": "Z"}]}))
    proc = launch("dataset=json", f"dataset.path={dup}", "training.batch_size=1", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0 and "dataset: 1 of 2 test records are also in train" in proc.stderr, proc.stderr


def test_has_system_turns_tells_whether_the_records_have_a_system_turn(files, tmp_path):
    from cruijff.config.data import has_system_turns

    assert has_system_turns(compose_config("dataset=chat", f"dataset.path={files / 'chats.jsonl'}",
                                           "dataset.split_column=part"))
    assert not has_system_turns(compose_config(*FIELDS, f"dataset.path={files / 'all.csv'}", "dataset.split_column=part"))
    assert has_system_turns(compose_config(*FIELDS, f"dataset.path={files / 'all.csv'}", "dataset.split_column=part",
                                           "dataset.system_prompt=Answer."))
    assert not has_system_turns(compose_config())  # the embedded dataset
    chats = tmp_path / "plain.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "a"}], "part": part}) + "\n"
                             for part in ("train", "test")))
    assert not has_system_turns(compose_config("dataset=chat", f"dataset.path={chats}", "dataset.split_column=part"))
