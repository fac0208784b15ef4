"""`--data` beyond JSON/JSONL (issue 20): Parquet, CSV/TSV, Arrow files, datasets.save_to_disk
folders, dataset folders and Hugging Face hub datasets, read with `datasets` into the same
records; every bad row named (FILE:ROW / org/name[split]:ROW), exit 2, nothing written;
`--data-columns`; the dataset's identity in build.json and the model card.

No network: a hub dataset is served from a hub cache laid out as huggingface_hub lays it out
(``datasets--org--name/{blobs,snapshots/<sha>,refs/main}``) with ``HF_HUB_OFFLINE=1`` (or a hub
that refuses connections). ``datasets.load_dataset("org/name")`` itself does not read that cache
offline (only a dataset it prepared before, in its own cache, and not by revision), so ftpack
resolves the revision there and loads the snapshot of that commit as a dataset folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training.data import load_dataset

REPO = Path(__file__).resolve().parent.parent
HUB_ID = "ftpack-tests/hello-chat"
SHA_1 = "1" * 40
SHA_2 = "2" * 40


def conversations(n: int = 4, *, prefix: str = "Say hello to") -> list[list[dict]]:
    names = "Ada Bo Cy Di Ed Flo Gus Hal Ivy Jo Kim Lu Max Ned Ola Pia Quin Rex Sue Tom Una Vic Wes Xia".split()
    return [[{"role": "user", "content": f"{prefix} {names[i % len(names)]}."},
             {"role": "assistant", "content": f"Hello, {names[i % len(names)]}!"}] for i in range(n)]


def as_records(convs: list[list[dict]]) -> list[dict]:
    return [{"messages": c} for c in convs]


BAD_ROW = {"messages": [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "Hm."}]}


# -- writing each kind of source ----------------------------------------------------------------

def _cells(rec: dict) -> dict:
    """A record as CSV cells: lists as JSON text."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in rec.items()}


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def write_table(kind: str, folder: Path, rows: list[dict]) -> Path:
    """``rows`` as a source of ``kind``; returns what --data names."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path = folder / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    if kind == "parquet":
        path = folder / "d.parquet"
        path.write_bytes(parquet_bytes(rows))
        return path
    if kind in ("csv", "tsv"):
        path = folder / f"d.{kind}"
        cells = [_cells(r) for r in rows]
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for c in cells for k in c)),
                                    delimiter="\t" if kind == "tsv" else ",")
            writer.writeheader()
            writer.writerows(cells)
        return path
    if kind in ("save_to_disk", "arrow"):
        saved = folder / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(saved))
        if kind == "save_to_disk":
            return saved
        path = folder / "d.arrow"  # the Arrow stream file datasets writes, alone
        path.write_bytes(next(saved.glob("*.arrow")).read_bytes())
        return path
    if kind == "arrow-ipc":
        import pyarrow as pa
        import pyarrow.ipc as ipc

        path = folder / "d.arrow"
        table = pa.Table.from_pylist(rows)
        with ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
        return path
    if kind == "save_to_disk-dict":
        saved = folder / "saved-dict"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(as_records(conversations(1, prefix="Not"))),
                              "chat": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
        return saved
    if kind == "folder":  # a dataset repository as on the hub, here on disk
        repo = folder / "repo"
        (repo / "data").mkdir(parents=True)
        (repo / "data" / "train-00000.parquet").write_bytes(parquet_bytes(rows))
        return repo
    raise ValueError(kind)


#: A dataset card naming two configurations, as on the hub.
README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
- config_name: alpaca
  data_files:
  - split: train
    path: alpaca/train.parquet
---
# hello-chat
"""


def hub_snapshot(cache: Path, repo_id: str, sha: str, rows: list[dict], *, ref: str | None = "main",
                 alpaca: list[dict] | None = None) -> Path:
    """A dataset in the hub cache as huggingface_hub writes it: content-addressed blobs, a
    snapshot of links per commit, and ``refs/<branch>`` naming the commit."""
    repo = cache / ("datasets--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    files = {"README.md": README.encode(), "data/train-00000-of-00001.parquet": parquet_bytes(rows),
             "data/test-00000-of-00001.parquet": parquet_bytes(as_records(conversations(2, prefix="Test")))}
    if alpaca is not None:
        files["alpaca/train.parquet"] = parquet_bytes(alpaca)
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache (HF_HUB_CACHE), offline (HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def source(kind: str, tmp_path: Path, rows: list[dict], hub_cache: Path | None = None) -> tuple[str, list[str], str]:
    """(what --data names, extra flags, how problems name it) for ``rows`` as a ``kind`` source."""
    if kind == "hub":
        hub_snapshot(hub_cache, HUB_ID, SHA_1, rows)
        return HUB_ID, [], f"{HUB_ID}[train]"
    path = write_table(kind, tmp_path / kind, rows)
    flags = ["--data-split", "chat"] if kind == "save_to_disk-dict" else []
    return str(path), flags, str(path)


def _flags(flags: list[str]) -> dict:
    return {"split": flags[1]} if flags else {}


KINDS = ["jsonl", "parquet", "csv", "tsv", "arrow", "arrow-ipc", "save_to_disk", "save_to_disk-dict", "folder", "hub"]


# -- every kind reads the same records ----------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_loads_the_same_conversations(kind, tmp_path, hub_cache):
    convs = conversations(4)
    data, flags, _ = source(kind, tmp_path, as_records(convs), hub_cache)
    dataset = load_dataset(data, identify=True, **_flags(flags))
    assert dataset.format == "messages" and dataset.conversations == convs
    identity = dataset.identity
    same_kind = {"jsonl": "json", "arrow-ipc": "arrow", "save_to_disk-dict": "save_to_disk"}
    assert identity["kind"] == same_kind.get(kind, kind)
    if kind == "hub":
        assert (identity["id"], identity["revision"], identity["config"], identity["split"]) == (
            HUB_ID, SHA_1, None, "train")
        assert "HF_HUB_OFFLINE=1" in identity["read_from"]
    elif kind in ("save_to_disk", "save_to_disk-dict", "folder"):
        assert len(identity["data_files_sha256"]) == 64 and identity["data_files"] >= 1
    else:
        from ftpack.core.atomic import sha256_file

        assert identity["sha256"] == sha256_file(Path(data))


def test_csv_cells_are_read_as_text_and_json_cells_are_parsed(tmp_path):
    path = tmp_path / "alpaca.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:  # a BOM, as spreadsheets write
        writer = csv.writer(fh)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(["Give the code.", "", "007"])
        writer.writerow(["Spell it, then quote it", "x,y", "NA\n\"1.50\""])
    convs = load_dataset(path).conversations
    assert convs[0] == [{"role": "user", "content": "Give the code."}, {"role": "assistant", "content": "007"}]
    assert convs[1][0]["content"] == "Spell it, then quote it\n\nx,y" and convs[1][1]["content"] == 'NA\n"1.50"'

    # a messages column, and TRL's conversational prompt/completion, serialised as JSON text
    rows = [{"prompt": json.dumps([{"role": "user", "content": "Hi"}]),
             "completion": json.dumps([{"role": "assistant", "content": "Hello"}])},
            {"prompt": "[citation needed] is a tag", "completion": "A plain string that starts with ["}]
    path = tmp_path / "pc.parquet"
    path.write_bytes(parquet_bytes(rows))
    convs = load_dataset(path).conversations
    assert convs[0] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert convs[1][0]["content"] == "[citation needed] is a tag"


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "jsonl"])
def test_a_bad_row_is_named_by_its_row_exit_2_nothing_written(kind, tmp_path, hub_cache, run_cli):
    rows = as_records(conversations(4))
    rows[2] = BAD_ROW
    data, flags, label = source(kind, tmp_path, rows, hub_cache)
    out = tmp_path / "out" / "train.jsonl"
    result = run_cli("data", data, *flags, "-o", out)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert f"{label}:3: messages[0]: roles out of order" in flat, result.output
    assert "Rows are counted from 1" in flat and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_unreadable_file_is_one_clear_error_without_the_librarys_log_line(tmp_path, cli_in_fresh_process):
    """datasets logs "Failed to read schema …" before raising; ftpack's error carries that
    message, so the log line is dropped (--debug keeps it)."""
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(range(256)) * 2)
    code, heavy, output = cli_in_fresh_process("data", str(bad))
    assert code == 2, output
    assert "cannot read it as a Parquet file" in output and "Traceback" not in output
    assert "Failed to read schema" not in output, output
    _, _, debug = cli_in_fresh_process("--debug", "data", str(bad))
    assert "Failed to read schema" in debug


def test_every_problem_is_listed_and_unreadable_cells_too(tmp_path):
    rows = [_cells(r) for r in as_records(conversations(5))]
    rows[1]["messages"] = "[{\"role\": \"user\""  # cut short
    rows[3]["messages"] = json.dumps([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}])
    path = write_table("csv", tmp_path, rows)
    with pytest.raises(FtpackError) as exc:
        load_dataset(path)
    message = exc.value.message
    assert exc.value.code == 2 and "2 problems; nothing was written" in message
    assert f"{path}:2: field 'messages' is text that is not a JSON list" in message
    assert f"{path}:4: messages[0].content is empty" in message


# -- --data-columns ---------------------------------------------------------------------------------

def test_data_columns_map_fields_from_other_columns(tmp_path, run_cli):
    sharegpt = [{"id": i, "dialog": [{"from": "human", "value": c[0]["content"]},
                                     {"from": "gpt", "value": c[1]["content"]}]}
                for i, c in enumerate(conversations(3))]
    path = write_table("parquet", tmp_path, sharegpt)
    with pytest.raises(FtpackError) as exc:  # no column it knows: one clear error, not one per row
        load_dataset(path)
    assert "none of its columns (id, dialog)" in exc.value.message and "--data-columns" in exc.value.hint
    dataset = load_dataset(path, columns=["conversations=dialog"], identify=True)
    assert dataset.format == "sharegpt" and dataset.conversations == conversations(3)
    assert dataset.identity["columns"] == {"conversations": "dialog"}
    with pytest.raises(FtpackError) as exc:
        load_dataset(path, columns=["conversations=dialogue"])
    assert "no column 'dialogue' (--data-columns conversations=dialogue); its columns: id, dialog" in exc.value.message

    # comma-separated, on a CSV; and the same mapping reads JSON keys
    qa = [{"question": c[0]["content"], "answer": c[1]["content"]} for c in conversations(3)]
    for kind in ("csv", "jsonl"):
        path = write_table(kind, tmp_path / kind, qa)
        result = run_cli("--json", "data", path, "--data-columns", "input=question,output=answer")
        assert result.exit_code == 0, result.output
        final = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        data = next(e["data"] for e in final if e["event"] == "result")
        assert data["format"] == "io" and data["records"] == 3
        assert data["source"]["columns"] == {"input": "question", "output": "answer"}


def test_data_columns_in_a_config_file_and_its_checks(tmp_path):
    from ftpack.settings import build_config

    data = write_table("jsonl", tmp_path, as_records(conversations(2)))
    config = tmp_path / "c.toml"
    config.write_text(f'data = "{data.name}"\n[data_columns]\nconversations = "dialog"\nsystem = "persona"\n')
    from ftpack.core.config import load_config_file

    cfg = build_config("m", load_config_file(config))
    assert cfg.data == data and cfg.data_columns == ("conversations=dialog", "system=persona")
    assert build_config("m", {"data": str(data), "data_columns": ["messages=chat"]}).data_columns == ("messages=chat",)
    for bad, words in ((["conversation=dialog"], "'conversation' is not a field"), (["dialog"], "not FIELD=COLUMN"),
                       (["input=q", "output=q"], "column 'q' is mapped to two fields")):
        with pytest.raises(FtpackError) as exc:
            build_config("m", {"data": str(data), "data_columns": bad})
        assert exc.value.code == 2 and words in exc.value.message and "data_columns (config file)" in exc.value.message


def test_source_settings_only_where_they_apply(tmp_path):
    from ftpack.settings import build_config

    data = write_table("parquet", tmp_path, as_records(conversations(2)))
    for key, flag in (("data_revision", "--data-revision"), ("data_config", "--data-config"),
                      ("data_split", "--data-split")):
        with pytest.raises(FtpackError) as exc:
            build_config("m", {"data": str(data), key: "x"})
        assert f"{flag} applies to" in exc.value.message and "a Parquet file" in exc.value.message
    cfg = build_config("m", {"data": HUB_ID, "data_revision": "v1", "data_split": "test"})
    assert cfg.data == HUB_ID and cfg.data_revision == "v1"  # an id stays as given, not made a path
    with pytest.raises(FtpackError) as exc:  # a missing file is not taken for a hub id
        build_config("m", {"data": str(tmp_path / "nope.parquet")})
    assert "Dataset not found" in exc.value.message


# -- hub datasets -------------------------------------------------------------------------------------

def test_hub_dataset_revision_config_and_split_from_the_cache(tmp_path, hub_cache):
    from ftpack.training.data_sources import resolve_hub_revision

    snapshot = hub_snapshot(hub_cache, HUB_ID, SHA_1, as_records(conversations(3)),
                            alpaca=[{"instruction": "Name a colour.", "output": "Blue."}])
    hub = resolve_hub_revision(HUB_ID)
    assert (hub.sha, hub.snapshot, hub.asked) == (SHA_1, snapshot, "main")
    assert load_dataset(HUB_ID).conversations == conversations(3)
    assert load_dataset(HUB_ID, split="test").conversations == conversations(2, prefix="Test")
    alpaca = load_dataset(HUB_ID, config="alpaca", identify=True)
    assert alpaca.format == "alpaca" and alpaca.identity["config"] == "alpaca"
    assert load_dataset(HUB_ID, revision=SHA_1).conversations == conversations(3)  # a commit: its snapshot

    with pytest.raises(FtpackError) as exc:
        load_dataset(HUB_ID, split="validation")
    assert exc.value.code == 2 and "Unknown split" in exc.value.message and "--data-split" in exc.value.hint
    with pytest.raises(FtpackError) as exc:
        load_dataset(HUB_ID, revision="v2")
    assert exc.value.message.startswith(f"Dataset '{HUB_ID}' (revision v2) is not in the local Hugging Face cache "
                                        "and the hub is offline (HF_HUB_OFFLINE=1)")
    with pytest.raises(FtpackError) as exc:
        load_dataset("ftpack-tests/never-loaded")
    assert "not in the local Hugging Face cache" in exc.value.message


def test_a_build_on_an_uncached_hub_dataset_offline_stops_before_writing(tmp_path, hub_cache, tiny_llama, run_cli):
    out = tmp_path / "build"
    result = run_cli("--json", "build", "x", "--base", tiny_llama, "--data", "ftpack-tests/never-loaded",
                     "--out", out, "--no-register")
    assert result.exit_code == 2, result.output
    error = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")][-1]
    assert error["event"] == "error" and "'ftpack-tests/never-loaded' (revision main) is not in the local" in \
        error["message"]
    assert not out.exists()


def _ftpack_data(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """``ftpack ARGS`` in a fresh process (huggingface_hub and datasets read HF_* at import)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **env}
    full_env.pop("FTPACK_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "ftpack", *map(str, args)], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_hub_dataset_is_fetched_then_read_offline_from_the_same_cache(tmp_path):
    """Online, against a hub double serving a dataset repo: huggingface_hub records main's
    commit in the cache and datasets fetches the data files into it; then, with HF_HUB_OFFLINE=1,
    the same commit and records come from that cache alone."""
    from fake_hub import COMMIT, FakeHub

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train-00000-of-00001.parquet").write_bytes(parquet_bytes(as_records(conversations(3))))
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# hello-chat\n", encoding="utf-8")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}

    def summary(output: str) -> dict:
        return next(json.loads(line)["data"] for line in output.splitlines()
                    if line.startswith("{") and json.loads(line)["event"] == "result")

    with FakeHub(HUB_ID, repo, repo_type="dataset") as hub:
        status, output = _ftpack_data(tmp_path, "--json", "data", HUB_ID, HF_ENDPOINT=hub.url, **env)
        assert status == 0, output
        assert "data/train-00000-of-00001.parquet" in hub.downloaded
    online = summary(output)["source"]
    assert (online["id"], online["revision"], online["read_from"]) == (HUB_ID, COMMIT, "the hub")
    assert (tmp_path / "hub-cache" / "datasets--ftpack-tests--hello-chat" / "refs" / "main").read_text() == COMMIT

    status, output = _ftpack_data(tmp_path, "--json", "data", HUB_ID, "-o", tmp_path / "out.jsonl",
                                  HF_ENDPOINT="http://127.0.0.1:9", **{**env, "HF_HUB_OFFLINE": "1"})
    assert status == 0, output
    offline = summary(output)["source"]
    assert offline["revision"] == COMMIT and offline["read_from"] == "the local Hugging Face cache (HF_HUB_OFFLINE=1)"
    assert [json.loads(line)["messages"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == \
        conversations(3)




def test_unreachable_hub_reads_the_cache_and_says_so_or_fails_at_once(tmp_path, refused_endpoint):
    """A fresh process (huggingface_hub and datasets read HF_* at import), online mode, the hub
    refusing connections: a cached dataset is read from the cache, and the summary says so; an
    uncached one is one clear error in seconds."""
    import time

    cache = tmp_path / "hub-cache"
    hub_snapshot(cache, HUB_ID, SHA_1, as_records(conversations(3)))
    env = {"HF_ENDPOINT": refused_endpoint, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    status, output = _ftpack_data(tmp_path, "data", HUB_ID, **env)
    text = " ".join(output.split())
    assert status == 0, output
    assert f"{HUB_ID}@{SHA_1}" in text, output
    assert f"the local Hugging Face cache (the hub ({refused_endpoint}) is unreachable" in text, output

    started = time.monotonic()
    status, output = _ftpack_data(tmp_path, "data", "ftpack-tests/never-loaded", **env)
    text = " ".join(output.split())
    assert status == 2, output
    assert "'ftpack-tests/never-loaded' (revision main) is not in the local Hugging Face cache" in text, output
    assert f"the hub ({refused_endpoint}) is unreachable" in text and "Connection refused" in text
    lowered = output.lower()
    assert output.count("error:") == 1 and not any(w in lowered for w in ("traceback", "retrying", "warning"))
    assert time.monotonic() - started < 20


def test_a_new_upstream_revision_reruns_the_data_stage(tmp_path, hub_cache, tiny_llama):
    """The commit main names is in the data stage's input hash: the same commit skips the stage,
    refs/main moved to a new snapshot reruns it (and build.json records the new commit)."""
    from ftpack.core.report import Reporter
    from ftpack.core.runner import run_stages
    from ftpack.pipeline import build_stages, resolve_config
    from ftpack.settings import build_config

    hub_snapshot(hub_cache, HUB_ID, SHA_1, as_records(conversations(4)))
    out = tmp_path / "build"
    cfg = build_config("hubby", {"data": HUB_ID, "base": str(tiny_llama), "register": "none", "out": str(out),
                                 "max_seq_length": 64, "method": "lora"})
    data_stage = [s for s in build_stages() if s.name == "data"]

    def run() -> tuple[str, dict]:
        resolved, why = resolve_config(cfg)
        assert why["data_revision"].startswith(f"{HUB_ID}'s main in the local Hugging Face cache (HF_HUB_OFFLINE=1)")
        stream = io.StringIO()
        manifest = run_stages(resolved, data_stage, out, reporter=Reporter("json", out=stream))
        ends = [json.loads(line) for line in stream.getvalue().splitlines() if '"stage_end"' in line]
        return ends[-1]["status"], manifest.stages["data"].metrics["dataset"]

    status, identity = run()
    assert status == "done" and identity["revision"] == SHA_1
    assert json.loads((out / "build.json").read_text())["config"]["data_revision"] == SHA_1
    assert run()[0] == "skipped"
    hub_snapshot(hub_cache, HUB_ID, SHA_2, as_records(conversations(5)))  # upstream moved: refs/main -> SHA_2
    status, identity = run()
    assert status == "done" and identity["revision"] == SHA_2
    assert json.loads((out / "data" / "stats.json").read_text())["records"] == 5
    assert run()[0] == "skipped"


# -- end to end ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["parquet", "csv", "tsv", "arrow", "save_to_disk", "save_to_disk-dict", "folder",
                                  "hub"])
def test_each_kind_builds_and_the_card_names_the_dataset(kind, tmp_path, hub_cache, tiny_llama, run_cli):
    from ftpack.core.atomic import sha256_file

    from test_build_e2e import NAMES

    rows = as_records(conversations(len(NAMES)))
    data, flags, _ = source(kind, tmp_path, rows, hub_cache)
    out = tmp_path / "build"
    result = run_cli("--json", "build", f"tiny-{kind.replace('_', '-')}", "--base", tiny_llama, "--data", data,
                     *flags, "--out", out, "--method", "lora", "--max-steps", "1", "--max-seq-length", "64",
                     "--imatrix", "none", "--no-register", "--no-verify")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "build.json").read_text(encoding="utf-8"))
    assert all(manifest["stages"][s]["status"] == "done" for s in ("data", "train", "convert", "quantize", "report"))
    identity = manifest["stages"]["data"]["metrics"]["dataset"]
    assert manifest["stages"]["data"]["metrics"]["records"] == len(NAMES)
    card = (out / "report.md").read_text(encoding="utf-8")
    if kind == "hub":
        assert identity["id"] == HUB_ID and identity["revision"] == SHA_1
        assert f"| dataset | `{HUB_ID}@{SHA_1}` |" in card and "| config / split | default / train |" in card
    elif kind in ("save_to_disk", "save_to_disk-dict", "folder"):
        assert f"| folder | {data} |" in card and f"| data files sha256 | `{identity['data_files_sha256']}` |" in card
        if kind != "save_to_disk":
            assert f"| dataset split | {'chat' if kind == 'save_to_disk-dict' else 'train'} |" in card
    else:
        assert f"| file | {data} |" in card and f"| sha256 | `{sha256_file(Path(data))}` |" in card
