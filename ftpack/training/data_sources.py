"""Where a dataset's records come from: local files, a ``datasets.save_to_disk`` folder, or a
Hugging Face hub dataset; :mod:`ftpack.training.data` detects their format and checks them.

``--data`` names one of (:func:`source_of`):

* a ``.json`` / ``.jsonl`` file (any other suffix too): read by :mod:`ftpack.training.data`
  itself, with line-numbered errors, as always;
* a ``.parquet``, ``.csv`` or ``.tsv`` file, or a single ``.arrow`` file (the Arrow stream
  format ``datasets`` writes, or an Arrow IPC file): loaded with ``datasets`` (every CSV cell
  as text, an empty cell as the empty string);
* a folder: a ``datasets.save_to_disk`` folder (``state.json`` or ``dataset_dict.json``;
  ``--data-split`` picks a split of a DatasetDict, default ``train``), else a dataset
  repository laid out as on the hub (data files, optionally a README.md that names its
  configurations), loaded with ``datasets.load_dataset(folder)``;
* ``org/name`` when nothing exists at that path: a hub dataset, with ``--data-config``,
  ``--data-split`` (default ``train``) and ``--data-revision`` (default ``main``).

Rows become plain records: a null cell is an absent field, and the ``conversations`` /
``messages`` column (and a ``prompt`` / ``completion`` holding a list) may hold its list as
JSON text, which is parsed. ``--data-columns FIELD=COLUMN`` reads a field from a differently
named column (or JSON key). Problems name the row, counted from 1 (``FILE:ROW:``; for a hub
dataset ``org/name[split]:ROW:``).

A hub dataset's revision is resolved to its commit (:func:`resolve_hub_revision`): from the
hub, or, with ``HF_HUB_OFFLINE=1`` or a hub that does not answer one quick request
(:func:`ftpack.core.hub.probe_hub`), from the local Hugging Face cache, whose snapshot of that
commit is then loaded as a dataset folder (``datasets`` itself would only find a dataset it
prepared before, and not by revision). Not cached there: one clear error at once.

Each source has an identity (:func:`identity_of`) that build.json and the model card record:
a file's sha256, a folder's digest of its data files, a hub dataset's id, commit, config,
split and where it was read from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ftpack.core.config import OPTION_BY_KEY, hub_dataset_id
from ftpack.core.errors import FtpackError, bad_input

#: The record fields of every format (:mod:`ftpack.training.data`): the columns read.
FIELDS = ("conversations", "messages", "instruction", "input", "output", "system", "prompt", "completion")
#: Fields that hold a list of messages; a cell may hold it as JSON text.
LIST_FIELDS = ("conversations", "messages")
#: Fields that are text or (TRL's conversational form) a list of messages.
TEXT_OR_LIST_FIELDS = ("prompt", "completion")
DEFAULT_SPLIT = "train"
DEFAULT_REVISION = "main"
#: Local kinds by suffix; any other file is JSON / JSONL.
SUFFIX_KINDS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".arrow": "arrow"}
#: Kinds read through ``datasets`` (rows, not lines).
TABLE_KINDS = ("parquet", "csv", "tsv", "arrow", "save_to_disk", "folder", "hub")
SOURCE_HINT = ("Pass --data with a .json/.jsonl, .parquet, .csv/.tsv or .arrow file, a datasets.save_to_disk "
               "folder, or a Hugging Face hub dataset id (org/name).")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class DataSource:
    """A dataset as given: its kind, and where in it the records are."""

    given: str
    kind: str  # json | parquet | csv | tsv | arrow | save_to_disk | folder | hub
    path: Path | None = None  # local kinds
    repo_id: str | None = None  # hub
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    columns: tuple[tuple[str, str], ...] = ()  # (field, column)

    @property
    def split_name(self) -> str:
        return self.split or DEFAULT_SPLIT

    @property
    def label(self) -> str:
        """How problems name it: the file, or ``org/name[split]``."""
        return f"{self.repo_id}[{self.split_name}]" if self.kind == "hub" else str(self.path)

    @property
    def rows(self) -> bool:
        """Read through ``datasets``: problems name rows, not lines."""
        return self.kind in TABLE_KINDS


# -- --data-columns ---------------------------------------------------------------------------

def parse_columns(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``FIELD=COLUMN`` items (or a {field: column} table) -> {field: column}; a user error
    names the item that is wrong."""
    if not items:
        return {}
    pairs = list(items.items()) if isinstance(items, Mapping) else [str(i).partition("=")[::2] for i in items]
    out: dict[str, str] = {}
    for field, column in pairs:
        field, column = str(field).strip(), str(column).strip()
        if not field or not column:
            raise bad_input(f"--data-columns: {field}={column} is not FIELD=COLUMN.",
                            "E.g. --data-columns conversations=dialog (fields: " + ", ".join(FIELDS) + ").")
        if field not in FIELDS:
            raise bad_input(f"--data-columns: {field!r} is not a field ftpack reads.",
                            f"Fields: {', '.join(FIELDS)}; e.g. --data-columns conversations=dialog.")
        if field in out and out[field] != column:
            raise bad_input(f"--data-columns: field {field!r} is mapped twice ({out[field]!r} and {column!r}).")
        out[field] = column
    used = list(out.values())
    twice = sorted({c for c in used if used.count(c) > 1})
    if twice:
        raise bad_input(f"--data-columns: column {twice[0]!r} is mapped to two fields.")
    return out


def check_columns(value: tuple[str, ...], values: Mapping[str, Any], label: str) -> tuple[str, ...]:
    """Config-load check of ``data_columns``: ``FIELD=COLUMN`` items, normalised."""
    try:
        mapping = parse_columns(value)
    except FtpackError as exc:
        raise bad_input(exc.message.replace("--data-columns", label, 1), exc.hint) from None
    return tuple(f"{f}={c}" for f, c in mapping.items()) or None


def rename_fields(obj: Any, columns: Mapping[str, str]) -> Any:
    """A JSON record with each mapped field read from its column (a field the mapping
    replaces is not read from the record's own key of that name)."""
    if not columns or not isinstance(obj, dict):
        return obj
    sources = set(columns.values())
    out = {k: v for k, v in obj.items() if k not in columns or k in sources}
    for field, column in columns.items():
        if column in obj:
            out[field] = obj[column]
        if column != field and column not in columns:
            out.pop(column, None)
    return out


# -- what --data names --------------------------------------------------------------------------

def local_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "save_to_disk"
        return "folder"
    return SUFFIX_KINDS.get(path.suffix.lower(), "json")


_KIND_WORDS = {"json": "a JSON/JSONL file", "parquet": "a Parquet file", "csv": "a CSV file", "tsv": "a TSV file",
               "arrow": "an Arrow file", "save_to_disk": "a datasets.save_to_disk folder",
               "folder": "a dataset folder", "hub": "a hub dataset"}
#: Which kinds each source setting applies to.
_APPLIES = {"data_revision": ("hub",), "data_config": ("hub", "folder"),
            "data_split": ("hub", "folder", "save_to_disk")}


def source_of(value: str | Path, *, config: str | None = None, split: str | None = None,
              revision: str | None = None, columns: Iterable[str] | Mapping[str, str] | None = None) -> DataSource:
    """What ``--data`` names (see the module docstring); a missing path, or a setting that
    does not apply to this kind of source, is a user error."""
    text = str(value)
    repo = hub_dataset_id(text)
    if repo:
        kind, path = "hub", None
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise bad_input(f"Dataset not found: {value}", SOURCE_HINT)
        kind = local_kind(path)
    given = {"data_config": config, "data_split": split, "data_revision": revision}
    for key, setting in given.items():
        if setting is not None and kind not in _APPLIES[key]:
            flag = OPTION_BY_KEY[key].cli_flag
            where = " or ".join(_KIND_WORDS[k] for k in _APPLIES[key])
            raise bad_input(f"{flag} applies to {where}; {value} is {_KIND_WORDS[kind]}.",
                            f"Leave {flag} out for this dataset.")
    mapping = parse_columns(columns)
    return DataSource(text, kind, path, repo, config, split, revision, tuple(mapping.items()))


def check_data(value: Any, values: Mapping[str, Any], label: str) -> Any:
    """Config-load check of ``data``: a local file or folder that exists, or a hub id; the
    source settings given apply to it. Nothing is read and the hub is not asked yet."""
    try:
        source_of(value, config=values.get("data_config"), split=values.get("data_split"),
                  revision=values.get("data_revision"))
    except FtpackError as exc:
        if exc.message.startswith("Dataset not found"):
            raise bad_input(f"Dataset not found: {value} ({label}).", exc.hint) from None
        raise
    return value


def source_options(cfg: Any) -> dict[str, Any]:
    """The source settings of a config (BuildConfig, a namespace, or `ftpack data`'s flags)."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k, None))
    return {"columns": get("data_columns"), "config": get("data_config"), "split": get("data_split"),
            "revision": get("data_revision")}


# -- a hub dataset's revision ------------------------------------------------------------------

@dataclass(frozen=True)
class HubRevision:
    """The commit a hub dataset's revision names, and where it is read from."""

    repo_id: str
    asked: str  # the branch, tag or commit asked for
    sha: str
    source: str  # "the hub" or "the local Hugging Face cache (why)"
    snapshot: Path | None = None  # read from the cache: the snapshot folder of ``sha``

    @property
    def cached(self) -> bool:
        return self.snapshot is not None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")


def cache_folder(repo_id: str) -> Path:
    """The hub cache's folder of a dataset repository (as huggingface_hub lays it out)."""
    from ftpack.core.locations import hf_hub_cache

    return hf_hub_cache() / ("datasets--" + repo_id.replace("/", "--"))


def cached_revision(repo_id: str, revision: str) -> tuple[str, Path] | None:
    """(commit, snapshot folder) of ``revision`` in the local hub cache: a commit that has a
    snapshot, or a branch / tag whose ``refs/`` file names one; None when not cached."""
    folder = cache_folder(repo_id)
    sha = revision
    if not _COMMIT.match(revision):
        ref = folder / "refs" / revision
        try:
            sha = ref.read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / sha
    return (sha, snapshot) if _COMMIT.match(sha) and snapshot.is_dir() else None


def resolve_hub_revision(repo_id: str, revision: str | None = None) -> HubRevision:
    """The commit of ``revision`` (default main): asked of the hub, or from the local cache
    when offline (``HF_HUB_OFFLINE=1``) or when the hub does not answer one quick request.
    Not in the cache then: one user error at once, naming the id and what to do."""
    from ftpack.core.hub import describe, hub_endpoint, probe_hub

    asked = revision or DEFAULT_REVISION
    offline = hub_offline()
    unreachable = None if offline else probe_hub()
    if not offline and unreachable is None:
        try:
            return HubRevision(repo_id, asked, _hub_commit(repo_id, asked), "the hub")
        except _NetworkError as exc:
            unreachable = exc.__cause__ or exc
    cached = cached_revision(repo_id, asked)
    why = "HF_HUB_OFFLINE=1" if offline else f"the hub ({hub_endpoint()}) is unreachable: {describe(unreachable)}"
    if cached is None:
        from ftpack.core.locations import hf_hub_cache

        where = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else why
        raise bad_input(
            f"Dataset {repo_id!r} (revision {asked}) is not in the local Hugging Face cache and {where}; "
            f"nor is {repo_id} a local file or folder.",
            ("Load it once with network access" if offline else
             "Check the network, or set HF_ENDPOINT to a hub mirror you can reach")
            + f"; a dataset loaded before is read from the cache ({hf_hub_cache()}). Or give a local file.")
    sha, snapshot = cached
    return HubRevision(repo_id, asked, sha, f"the local Hugging Face cache ({why})", snapshot)


class _NetworkError(Exception):
    """The hub answered the probe but not the request: read from the cache instead."""


def _hub_commit(repo_id: str, revision: str, timeout_s: float = 10.0) -> str:
    """The commit ``revision`` names on the hub. Fetches the dataset card as ``datasets``
    does, which also records the branch in the cache (``refs/``) for offline runs."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as hf_errors

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        try:
            card = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision,
                                   etag_timeout=timeout_s, endpoint=endpoint)
            return Path(card).parent.name
        except getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError):  # no dataset card
            sha = HfApi(endpoint=endpoint).dataset_info(repo_id, revision=revision, timeout=timeout_s).sha
            _remember_ref(repo_id, revision, sha)
            return sha
    except hf_errors.GatedRepoError:
        raise bad_input(f"Dataset {repo_id!r} is gated on the Hugging Face hub: accept its terms first.",
                        "Log in with `hf auth login` (or set HF_TOKEN) after accepting them on "
                        f"https://huggingface.co/datasets/{repo_id}.") from None
    except hf_errors.RepositoryNotFoundError:
        raise bad_input(f"Dataset {repo_id!r} does not exist on the Hugging Face hub (or is private).",
                        "Check the id (org/name); for a private dataset log in with `hf auth login`. "
                        "A local folder of that name would be read instead.") from None
    except hf_errors.RevisionNotFoundError:
        raise bad_input(f"Dataset {repo_id!r} has no revision {revision!r} on the Hugging Face hub.",
                        "Give a branch, tag or commit of it with --data-revision.") from None
    except (OSError, hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError) as exc:
        raise _NetworkError(str(exc)) from exc
    except Exception as exc:  # httpx connect / timeout errors are not OSError subclasses
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3"):
            raise _NetworkError(str(exc)) from exc
        raise


def _remember_ref(repo_id: str, revision: str, sha: str) -> None:
    """Record ``refs/REVISION`` -> commit in the hub cache, as huggingface_hub does for a file."""
    if _COMMIT.match(revision):
        return
    try:
        from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision
        from huggingface_hub import constants

        folder = Path(constants.HF_HUB_CACHE) / ("datasets--" + repo_id.replace("/", "--"))
        _cache_commit_hash_for_specific_revision(str(folder), revision, sha)
    except (ImportError, OSError):  # a cache we cannot write: offline runs then need the commit
        pass


# -- reading rows ---------------------------------------------------------------------------------

@dataclass
class Row:
    """One record read through ``datasets``: its row number (from 1), the record, and what was
    wrong with its cells."""

    number: int
    value: dict[str, Any]
    errors: list[str]


def record_of(row: Mapping[str, Any], rename: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A row as a record: columns renamed to fields, null cells dropped, a list field held as
    JSON text parsed. Pure."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    for column, value in row.items():
        field = rename.get(column, column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, str) and field in LIST_FIELDS:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                errors.append(f"field {field!r} is text that is not a JSON list: {exc.msg} (character {exc.pos + 1})")
                continue
        elif isinstance(value, str) and field in TEXT_OR_LIST_FIELDS and value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "role" in m for m in parsed):
                value = parsed
        out[field] = value
    return out, errors


def read_rows(source: DataSource, hub: HubRevision | None = None) -> list[Row]:
    """Every row of a source read through ``datasets`` (``hub``: the resolved revision of a
    hub dataset). A source that cannot be read, or that has none of the fields, is a user
    error; problems of single rows are left to the caller."""
    import tempfile

    import datasets  # noqa: F401  (imported first, so that quiet_libraries turns its progress bars off)

    from ftpack.core.quiet import quiet_libraries

    # datasets logs the error of a file it cannot read before raising it; ftpack's message carries it
    with tempfile.TemporaryDirectory(prefix="ftpack-data-") as cache, quiet_libraries(errors=True):
        table = _load_table(source, hub, Path(cache))
        return list(_rows(table, source))


def _rows(table: Any, source: DataSource) -> Iterator[Row]:
    columns = dict(source.columns)
    available = list(table.column_names)
    missing = [f"{c!r} (--data-columns {f}={c})" for f, c in columns.items() if c not in available]
    if missing:
        raise bad_input(f"{source.label}: no column {', '.join(missing)}; its columns: {', '.join(available)}.",
                        "Name columns it has.")
    rename = {c: f for f, c in columns.items()}
    keep = [c for c in available if c in rename or (c in FIELDS and c not in columns)]
    if not keep:
        raise bad_input(f"{source.label}: none of its columns ({', '.join(available) or 'none'}) is a field "
                        f"ftpack reads ({', '.join(FIELDS)}).",
                        "Map them with --data-columns FIELD=COLUMN, e.g. --data-columns input=question,output=answer.")
    table = table.select_columns(keep)
    number = 0
    for batch in table.iter(batch_size=1000):
        for i in range(len(batch[keep[0]])):
            number += 1
            value, errors = record_of({c: batch[c][i] for c in keep}, rename)
            yield Row(number, value, errors)


def _load_table(source: DataSource, hub: HubRevision | None, cache: Path) -> Any:
    """The source as a ``datasets.Dataset`` (prepared in ``cache``, a temporary folder, and held
    in memory: nothing is written to the user's datasets cache)."""
    import datasets

    def load(path: str, **kw: Any) -> Any:
        return datasets.load_dataset(path, cache_dir=str(cache), keep_in_memory=True, **kw)

    kind, label = source.kind, source.label
    try:
        if kind == "parquet":
            return load("parquet", data_files=[str(source.path)], split="train")
        if kind in ("csv", "tsv"):
            sep = "\t" if kind == "tsv" else ","
            header = _csv_header(source.path, sep)
            features = datasets.Features({name: datasets.Value("string") for name in header})
            return load("csv", data_files=[str(source.path)], split="train", sep=sep, na_filter=False,
                        features=features)
        if kind == "arrow":
            return _arrow_file(source.path)
        if kind == "save_to_disk":
            return _pick_split(datasets.load_from_disk(str(source.path)), source)
        if kind == "folder":
            return load(str(source.path), name=source.config, split=source.split_name)
        if kind == "hub":
            assert hub is not None
            if hub.snapshot is not None:  # the cached snapshot of that commit, as a dataset folder
                return load(str(hub.snapshot), name=source.config, split=source.split_name)
            return load(source.repo_id, name=source.config, split=source.split_name, revision=hub.sha)
    except FtpackError:
        raise
    except Exception as exc:
        raise _read_error(source, hub, exc) from None
    raise ValueError(f"not a table kind: {kind}")


def _read_error(source: DataSource, hub: HubRevision | None, exc: BaseException) -> FtpackError:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
    what = f"{source.repo_id}@{hub.sha} ({hub.source})" if hub is not None else f"it as {_KIND_WORDS[source.kind]}"
    if source.kind in ("hub", "folder"):
        what += f", config {source.config or 'default'}, split {source.split_name}"
    if "config" in detail.lower():
        hint = "Pick a configuration with --data-config NAME."
    elif "split" in detail.lower():
        hint = "Pick a split with --data-split NAME."
    elif hub is not None and hub.cached:
        hint = ("The cached snapshot may lack this configuration's files: load it once with network access "
                "(without HF_HUB_OFFLINE=1).")
    else:
        hint = "Check the dataset (ftpack --debug ... shows the library's messages)."
    return bad_input(f"{source.label}: cannot read {what}: {detail}", hint)


def _csv_header(path: Path, sep: str) -> list[str]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh, delimiter=sep), None)
    if not header:
        raise bad_input(f"{path} is empty: no header row and no records.",
                        "Give a CSV/TSV file with a header row naming the columns.")
    return header


def _arrow_file(path: Path) -> Any:
    """A single .arrow file: the stream format ``datasets`` writes, or an Arrow IPC file."""
    import datasets
    import pyarrow as pa

    try:
        return datasets.Dataset.from_file(str(path))
    except pa.ArrowInvalid:
        import pyarrow.ipc as ipc
        from datasets.table import InMemoryTable

        with ipc.open_file(str(path)) as reader:
            return datasets.Dataset(InMemoryTable(reader.read_all()))


def _pick_split(loaded: Any, source: DataSource) -> Any:
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if source.split_name not in loaded:
            raise bad_input(f"{source.path} has no split {source.split_name!r}; its splits: {', '.join(loaded)}.",
                            "Pick one with --data-split NAME.")
        return loaded[source.split_name]
    if source.split is not None:
        raise bad_input(f"{source.path} holds one dataset, not a DatasetDict of splits; --data-split does not apply.",
                        "Leave --data-split out.")
    return loaded


# -- identity ---------------------------------------------------------------------------------------

def data_files(source: DataSource) -> list[Path]:
    """A local folder's data files: a save_to_disk folder's .arrow files, a dataset folder's
    files (hidden ones aside)."""
    folder = Path(source.path)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    if source.kind == "save_to_disk":
        files = [p for p in files if p.suffix == ".arrow"]
    return files


def files_digest(folder: Path, files: Iterable[Path]) -> str:
    """sha256 over each file's path (relative to ``folder``) and sha256."""
    from ftpack.core.atomic import sha256_file

    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def identity_of(source: DataSource, hub: HubRevision | None = None) -> dict[str, Any]:
    """What build.json and the model card say about the dataset (see the module docstring)."""
    out: dict[str, Any] = {"kind": source.kind}
    if source.kind == "hub":
        assert hub is not None
        out.update(id=source.repo_id, revision=hub.sha, asked=hub.asked, config=source.config,
                   split=source.split_name, read_from=hub.source)
    elif source.kind in ("save_to_disk", "folder"):
        files = data_files(source)
        out.update(path=str(Path(source.path).absolute()), data_files=len(files),
                   data_files_sha256=files_digest(Path(source.path), files))
        if source.kind == "folder" or source.split is not None:
            out["split"] = source.split_name
        if source.config is not None:
            out["config"] = source.config
    else:
        from ftpack.core.atomic import sha256_file

        out.update(path=str(Path(source.path).absolute()), sha256=sha256_file(source.path))
    if source.columns:
        out["columns"] = dict(source.columns)
    return out


def identity_rows(identity: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The identity as (name, value) rows: the dataset as given, its digest or commit."""
    if not identity:
        return []
    kind = identity.get("kind")
    if kind == "hub":
        rows = [("dataset", f"{identity['id']}@{identity['revision']}"),
                ("config / split", f"{identity.get('config') or 'default'} / {identity.get('split')}"),
                ("read from", str(identity.get("read_from")))]
    elif kind in ("save_to_disk", "folder"):
        rows = [("folder", str(identity.get("path"))), ("data files sha256", str(identity.get("data_files_sha256")))]
        if identity.get("split"):
            rows.append(("dataset split", str(identity["split"])))
    else:
        rows = [("file", str(identity.get("path"))), ("sha256", str(identity.get("sha256")))]
    if identity.get("columns"):
        rows.append(("columns", ", ".join(f"{f}={c}" for f, c in identity["columns"].items())))
    return rows
