"""Datasets: five input formats → validated ``messages`` conversations, stats and an eval split.

Input: a JSON array or JSONL file (UTF-8, a BOM is tolerated), or the rows of a Parquet,
CSV/TSV or Arrow file, a ``datasets.save_to_disk`` folder or a Hugging Face hub dataset
(:mod:`ftpack.training.data_sources`), in one of these formats, detected per dataset
(``--format`` forces one):

* ``sharegpt``  – ``{"conversations": [{"from": "human"|"gpt"|"system", "value": …}]}``
  (FastChat's Vicuna format; an optional top-level ``system`` string is honoured);
* ``messages``  – ``{"messages": [{"role": "system"|"user"|"assistant", "content": …}]}``;
* ``alpaca``    – ``instruction``, optional ``input`` (joined after a blank line),
  ``output``, optional ``system``;
* ``io``        – ``{"input": …, "output": …}`` (+ optional ``system``);
* ``prompt-completion`` – ``{"prompt": …, "completion": …}`` (strings, or TRL's
  conversational form: two lists of messages).

Every record is checked and *all* problems are reported at once (up to a cap) as
``FILE:LINE: what is wrong`` — the JSONL line, or for a JSON array the line where the
item starts plus its index; for rows read through ``datasets`` ``FILE:ROW:`` (rows counted
from 1; a hub dataset is ``org/name[split]:ROW:``) — then a :class:`FtpackError` with exit
code 2 is raised and nothing is written. A valid conversation is an optional system message, then
user/assistant turns alternating, ending with an assistant message; contents are
non-empty strings.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ftpack.core.atomic import atomic_path, write_json
from ftpack.core.config import RECORD_FORMATS as FORMATS  # the one list, also behind --format
from ftpack.core.errors import FtpackError, bad_input
from ftpack.training.data_sources import DataSource, identity_of, identity_rows, rename_fields, source_of

ROLES = ("system", "user", "assistant")
#: ShareGPT speaker names → roles (FastChat uses human/gpt; some exports use user/assistant).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
MAX_PROBLEMS = 50
#: Default eval fraction, used when the dataset has at least this many records.
DEFAULT_EVAL_RATIO = 0.05
MIN_RECORDS_FOR_DEFAULT_EVAL = 20

_FORMAT_KEYS = {
    "sharegpt": "conversations",
    "messages": "messages",
    "alpaca": "instruction/output",
    "io": "input/output",
    "prompt-completion": "prompt/completion",
}

Conversation = list[dict[str, str]]


@dataclass
class Record:
    """One valid conversation and where it came from."""

    messages: Conversation
    line: int  # 1-based line where the record starts
    index: int  # 0-based position in the file


@dataclass
class Dataset:
    """A loaded, validated dataset."""

    path: Path | str  # as given (a hub dataset: its id)
    format: str
    records: list[Record]
    source: DataSource | None = None
    identity: dict[str, Any] | None = None  # with ``identify``: what build.json records (data_sources.identity_of)

    @property
    def conversations(self) -> list[Conversation]:
        return [r.messages for r in self.records]


class Problems:
    """Collects ``FILE:LINE: message`` problems; reports them in line order, the first
    :data:`MAX_PROBLEMS` in full. ``path``: the file, or a hub dataset's ``org/name[split]``;
    ``rows``: the numbers are rows read through ``datasets``, not lines."""

    def __init__(self, path: Path | str, cap: int = MAX_PROBLEMS, *, rows: bool = False,
                 columns: tuple[tuple[str, str], ...] = ()):
        self.path = path
        self.cap = cap
        self.rows = rows
        self.columns = columns
        self.items: list[tuple[int, int, str]] = []

    def add(self, line: int, message: str, index: int | None = None) -> None:
        where = f"{self.path}:{line}: " + (f"item {index}: " if index is not None else "")
        self.items.append((line, len(self.items), where + message))

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def lines(self) -> list[str]:
        return [text for _, _, text in sorted(self.items)[: self.cap]]

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> FtpackError:
        shown = self.lines
        more = f"\n... and {self.count - len(shown)} more" if self.count > len(shown) else ""
        noun = "problem" if self.count == 1 else "problems"
        hint = "Fix these records (or pick the format with --format) and run again."
        if self.rows:
            hint += " Rows are counted from 1 (a CSV file's header row is not counted)."
        if self.columns:
            hint += " Fields read from other columns: " + ", ".join(f"{f}={c}" for f, c in self.columns) + "."
        return bad_input(f"{self.path}: {self.count} {noun}; nothing was written.\n" + "\n".join(shown) + more, hint)


# -- reading JSON / JSONL -----------------------------------------------------------------

@dataclass
class RawItem:
    line: int
    index: int
    value: Any
    in_array: bool


def read_text(path: Path) -> str:
    """The file as text: UTF-8 with an optional BOM; an undecodable byte is a user error."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise bad_input(f"Dataset not found: {path}") from None
    except IsADirectoryError:
        raise bad_input(f"Dataset {path} is a folder; give a .json or .jsonl file.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise bad_input(f"{path}:{line}: not valid UTF-8 (byte {exc.start}).",
                        "Save the file as UTF-8.") from None


def iter_raw_items(path: Path, text: str, problems: Problems) -> Iterator[RawItem]:
    """JSON values of a JSON array or a JSONL file, each with the line it starts on."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_json_array(text, problems)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == 1 and _is_single_json_object(text):
                problems.add(1, "the file is a single JSON object; expected a JSON array of records "
                                "or JSONL (one record per line)")
                return
            problems.add(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        yield RawItem(number, number - 1, value, False)


def _is_single_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _iter_json_array(text: str, problems: Problems) -> Iterator[RawItem]:
    decoder = json.JSONDecoder()
    n = len(text)
    counted_pos, counted_line = 0, 1

    def line_at(pos: int) -> int:
        nonlocal counted_pos, counted_line
        counted_line += text.count("\n", counted_pos, pos)
        counted_pos = pos
        return counted_line

    def skip_ws(pos: int) -> int:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_ws(0) + 1  # past "["
    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    index = 0
    while True:
        pos = skip_ws(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problems.add(line_at(exc.pos), f"invalid JSON: {exc.msg} (column {exc.colno})", index)
            return
        yield RawItem(line_at(pos), index, value, True)
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos += 1
            index += 1
            continue
        if pos < n and text[pos] == "]":
            rest = skip_ws(pos + 1)
            if rest < n:
                problems.add(line_at(rest), "unexpected text after the end of the JSON array")
            return
        problems.add(line_at(min(pos, n)), "invalid JSON: expected ',' or ']' after an array item", index)
        return


# -- formats ---------------------------------------------------------------------------

def detect_format(obj: Any) -> str | None:
    """The format a single record is in, from its keys (None if it fits none)."""
    if not isinstance(obj, dict):
        return None
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "messages"
    if "instruction" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt-completion"
    if "input" in obj or "output" in obj:
        return "io"
    return None


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _text_field(obj: dict, key: str, errors: list[str], *, required: bool = True,
                label: str | None = None) -> str | None:
    label = label or f"field {key!r}"
    if key not in obj or obj[key] is None:
        if required:
            errors.append(f"missing {label}")
        return None
    value = obj[key]
    if not isinstance(value, str):
        errors.append(f"{label} must be a string, got {_type_name(value)}")
        return None
    if required and not value.strip():
        errors.append(f"{label} is empty")
        return None
    return value


def _from_role_list(items: Any, list_name: str, role_key: str, text_key: str, role_map: dict[str, str],
                    errors: list[str]) -> Conversation:
    if not isinstance(items, list):
        errors.append(f"field {list_name!r} must be a list, got {_type_name(items)}")
        return []
    if not items:
        errors.append(f"field {list_name!r} is empty")
        return []
    out: Conversation = []
    for i, item in enumerate(items):
        where = f"{list_name}[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where} must be an object, got {_type_name(item)}")
            continue
        raw_role = item.get(role_key)
        if raw_role is None:
            errors.append(f"{where}: missing field {role_key!r}")
            continue
        role = role_map.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            expected = ", ".join(dict.fromkeys(role_map))
            errors.append(f"{where}: unknown role {raw_role!r} (expected {expected})")
            continue
        text = _text_field(item, text_key, errors, label=f"{where}.{text_key}")
        if text is not None:
            out.append({"role": role, "content": text})
    return out


def _check_roles(messages: Conversation, list_name: str, errors: list[str], offset: int = 0) -> None:
    """Optional system first, then user/assistant alternating, ending with assistant."""
    if not messages:
        return
    start = 1 if messages[0]["role"] == "system" else 0
    if len(messages) == start:
        errors.append(f"{list_name} has no user/assistant turns")
        return
    expected = "user"
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        where = f"{list_name}[{i + offset}]"
        if role == "system":
            errors.append(f"{where}: a system message is only allowed first")
            return
        if role != expected:
            errors.append(f"{where}: roles out of order: expected {expected!r}, got {role!r} "
                          "(user and assistant must alternate after an optional system message)")
            return
        expected = "assistant" if expected == "user" else "user"
    if messages[-1]["role"] != "assistant":
        errors.append(f"{list_name} must end with an assistant message (the last is {messages[-1]['role']!r})")


def _with_system(obj: dict, messages: Conversation, errors: list[str]) -> Conversation:
    system = _text_field(obj, "system", errors, required=False)
    if system and system.strip():
        return [{"role": "system", "content": system}] + messages
    return messages


def convert_record(obj: Any, fmt: str) -> tuple[Conversation, list[str]]:
    """One record in format ``fmt`` → (messages, problems). Pure; used by tests directly."""
    errors: list[str] = []
    if not isinstance(obj, dict):
        return [], [f"expected a JSON object, got {_type_name(obj)}"]
    if fmt == "sharegpt":
        if "conversations" not in obj:
            return [], ["missing field 'conversations'"]
        turns = _from_role_list(obj["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, errors)
        if errors:
            return [], errors
        _check_roles(turns, "conversations", errors)
        if turns and turns[0]["role"] != "system":
            turns = _with_system(obj, turns, errors)
        return turns, errors
    if fmt == "messages":
        if "messages" not in obj:
            return [], ["missing field 'messages'"]
        messages = _from_role_list(obj["messages"], "messages", "role", "content",
                                   {r: r for r in ROLES}, errors)
        if not errors:
            _check_roles(messages, "messages", errors)
        return messages, errors
    if fmt == "alpaca":
        instruction = _text_field(obj, "instruction", errors)
        extra = _text_field(obj, "input", errors, required=False)
        output = _text_field(obj, "output", errors)
        if errors:
            return [], errors
        user = instruction if not (extra and extra.strip()) else f"{instruction}\n\n{extra}"
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return _with_system(obj, messages, errors), errors
    if fmt == "io":
        question = _text_field(obj, "input", errors)
        answer = _text_field(obj, "output", errors)
        if errors:
            return [], errors
        return _with_system(obj, [{"role": "user", "content": question},
                                  {"role": "assistant", "content": answer}], errors), errors
    if fmt == "prompt-completion":
        if isinstance(obj.get("prompt"), list) or isinstance(obj.get("completion"), list):
            return _conversational_prompt_completion(obj)
        prompt = _text_field(obj, "prompt", errors)
        completion = _text_field(obj, "completion", errors)
        if errors:
            return [], errors
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], errors
    raise ValueError(f"unknown format {fmt!r}")


def _conversational_prompt_completion(obj: dict) -> tuple[Conversation, list[str]]:
    """TRL's conversational prompt-completion: prompt and completion are message lists."""
    errors: list[str] = []
    roles = {r: r for r in ROLES}
    prompt = _from_role_list(obj.get("prompt"), "prompt", "role", "content", roles, errors)
    completion = _from_role_list(obj.get("completion"), "completion", "role", "content", roles, errors)
    if errors:
        return [], errors
    messages = prompt + completion
    _check_roles(messages, "prompt+completion", errors)
    return messages, errors


# -- loading -----------------------------------------------------------------------------

def load_dataset(path: str | Path, fmt: str = "auto", *, max_problems: int = MAX_PROBLEMS,
                 columns: Any = None, config: str | None = None, split: str | None = None,
                 revision: str | None = None, identify: bool = False) -> Dataset:
    """Read, detect, convert and validate a dataset; every problem → one FtpackError (code 2).

    ``path``: what ``--data`` names (:func:`ftpack.training.data_sources.source_of`);
    ``columns`` (``FIELD=COLUMN`` items), ``config``, ``split``, ``revision``: where in it the
    records are. ``identify``: also record the dataset's identity (a file's sha256, a hub
    dataset's commit...) in :attr:`Dataset.identity`."""
    if fmt not in ("auto", *FORMATS):
        raise bad_input(f"Unknown dataset format {fmt!r}.", f"Use one of: auto, {', '.join(FORMATS)}.")
    source = source_of(path, config=config, split=split, revision=revision, columns=columns)
    if source.rows:
        return _load_rows(source, fmt, max_problems, identify)
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise bad_input(f"{path} is empty: no records.",
                        "Give a JSON array or JSONL file with at least one conversation.")
    problems = Problems(path, max_problems, columns=source.columns)
    items = list(iter_raw_items(path, text, problems))
    if not items and not problems:
        raise bad_input(f"{path} has no records (an empty JSON array).",
                        "Give at least one conversation.")
    if source.columns:
        mapping = dict(source.columns)
        for item in items:
            item.value = rename_fields(item.value, mapping)
    records, file_format = _convert_items(items, fmt, problems)
    return Dataset(path, file_format or "unknown", records, source, identity_of(source) if identify else None)


def _load_rows(source: DataSource, fmt: str, max_problems: int, identify: bool) -> Dataset:
    """A dataset read through ``datasets`` (:mod:`ftpack.training.data_sources`): rows, not lines."""
    from ftpack.training.data_sources import read_rows, resolve_hub_revision

    hub = resolve_hub_revision(source.repo_id, source.revision) if source.kind == "hub" else None
    rows = read_rows(source, hub)
    if not rows:
        raise bad_input(f"{source.label} has no records.", "Give at least one conversation.")
    problems = Problems(source.label, max_problems, rows=True, columns=source.columns)
    items = []
    for row in rows:
        for err in row.errors:
            problems.add(row.number, err)
        if not row.errors:
            items.append(RawItem(row.number, row.number - 1, row.value, False))
    records, file_format = _convert_items(items, fmt, problems)
    identity = identity_of(source, hub) if identify or hub is not None else None
    return Dataset(source.given, file_format or "unknown", records, source, identity)


def _convert_items(items: list[RawItem], fmt: str, problems: Problems) -> tuple[list[Record], str | None]:
    """Detect the format (unless ``fmt`` forces one) and convert every item; raises
    ``problems`` as one error when there are any."""
    detected = [detect_format(item.value) for item in items]
    if fmt == "auto":
        counts = Counter(d for d in detected if d is not None)
        file_format = max(counts, key=lambda f: (counts[f], -detected.index(f))) if counts else None
    else:
        file_format = fmt

    records: list[Record] = []
    for item, det in zip(items, detected):
        index = item.index if item.in_array else None
        if not isinstance(item.value, dict):
            problems.add(item.line, f"expected a JSON object, got {_type_name(item.value)}", index)
            continue
        if file_format is None or det is None and fmt == "auto":
            keys = ", ".join(sorted(item.value))
            problems.add(item.line, f"unknown format (keys: {keys or 'none'}); expected one of: "
                         + "; ".join(f"{k} ({f})" for f, k in _FORMAT_KEYS.items()), index)
            continue
        if fmt == "auto" and det != file_format:
            problems.add(item.line, f"record is in {det} format but the file is {file_format} "
                         f"(detected from {Counter(detected)[file_format]} of {len(items)} records); "
                         "use one format per file", index)
            continue
        messages, errors = convert_record(item.value, file_format)
        for err in errors:
            problems.add(item.line, err, index)
        if not errors:
            records.append(Record(messages, item.line, item.index))
    if problems:
        raise problems.error()
    return records, file_format


# -- statistics, tokens, split --------------------------------------------------------------

def conversation_key(messages: Conversation) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def count_duplicates(conversations: Sequence[Conversation]) -> int:
    """Records identical to an earlier one."""
    return len(conversations) - len({conversation_key(c) for c in conversations})


def count_tokens(conversations: Sequence[Conversation], tokenizer: Any, template: Any) -> list[int]:
    """Training length of each conversation in tokens: the training chat template (with
    the BOS rule of :mod:`ftpack.training.templates`) rendered and tokenized as TRL does."""
    from ftpack.training.templates import render_chat, training_chat_template

    if getattr(template, "renders_ollama", False):  # an Ollama model's own TEMPLATE: its longest sequence
        from ftpack.training.ollama_format import encode_conversation

        return [max(len(r["input_ids"]) for r in encode_conversation(template, tokenizer, conv, masks=False))
                for conv in conversations]
    jinja = training_chat_template(template, tokenizer)
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    texts = [render_chat(jinja, conv, **specials) for conv in conversations]
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def count_stop_collisions(conversations: Sequence[Conversation], template: Any) -> int:
    """Records containing the template's stop strings or end-of-turn text: Ollama would
    cut an answer there, and the model sees a turn boundary where there is none."""
    if template is None:
        return 0
    markers = {*template.stop, template.end_of_turn} - {""}
    return sum(1 for conv in conversations if any(mk in m["content"] for m in conv for mk in markers))


def resolve_eval_ratio(eval_ratio: float | None, n_records: int) -> float:
    """``--eval-ratio`` if given, else 5% for datasets of at least 20 records, else none."""
    if eval_ratio is not None:
        return float(eval_ratio)
    return DEFAULT_EVAL_RATIO if n_records >= MIN_RECORDS_FOR_DEFAULT_EVAL else 0.0


def split_eval(conversations: Sequence[Conversation], ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic seeded split → (train indices, eval indices), both in file order.

    Identical conversations land on the same side, so the eval loss never scores a
    conversation the model was trained on. At least one record always stays in training.
    """
    n = len(conversations)
    if ratio <= 0 or n < 2:
        return list(range(n)), []
    groups: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        groups.setdefault(conversation_key(conv), []).append(i)
    keys = list(groups)
    if len(keys) < 2:
        return list(range(n)), []
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    target = max(1, round(n * ratio))
    chosen: list[int] = []
    for k in order:
        if len(chosen) >= target:
            break
        if n - len(chosen) - len(groups[keys[k]]) < 1:
            continue
        chosen.extend(groups[keys[k]])
    eval_set = set(chosen)
    return [i for i in range(n) if i not in eval_set], sorted(eval_set)


@dataclass
class DataSummary:
    """What `ftpack data` and the data stage report and record."""

    path: str
    format: str
    template: str | None
    records: int
    messages: int
    turns: int  # assistant replies
    with_system: int
    duplicates: int
    tokens: dict[str, int | float] | None
    tokens_note: str | None
    max_seq_length: int
    too_long: int
    dropped_long: int
    stop_collisions: int  # records whose text contains a stop string / end-of-turn of the template
    eval_ratio: float
    seed: int
    train_records: int
    eval_records: int
    outputs: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] | None = None  # the dataset's identity (data_sources.identity_of)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class PreparedData:
    train: list[Conversation]
    eval: list[Conversation]
    summary: DataSummary


def with_default_system(conversations: Sequence[Conversation], system: str | None) -> list[Conversation]:
    """Each conversation, with ``system`` as its first message when it has none."""
    if not system:
        return list(conversations)
    return [c if c and c[0]["role"] == "system" else [{"role": "system", "content": system}, *c]
            for c in conversations]


def prepare_data(path: str | Path, *, fmt: str = "auto", template: Any = None, tokenizer: Any = None,
                 max_seq_length: int = 2048, drop_long: bool = False, eval_ratio: float | None = None,
                 seed: int = 42, tokens_note: str | None = None, system: str | None = None,
                 columns: Any = None, config: str | None = None, split: str | None = None,
                 revision: str | None = None) -> PreparedData:
    """Load + validate, count tokens (when a tokenizer and template are given), drop or
    flag long records, and split. Pure apart from reading ``path`` (``columns``, ``config``,
    ``split``, ``revision``: where in it the records are, as :func:`load_dataset` takes them).

    ``system`` (the build's ``--system``, which also becomes the Modelfile's SYSTEM) is put
    in front of every conversation that has no system message, so the model trains on the
    system block Ollama will render for it."""
    dataset = load_dataset(path, fmt, columns=columns, config=config, split=split, revision=revision, identify=True)
    conversations = with_default_system(dataset.conversations, system)
    lengths: list[int] | None = None
    if tokenizer is not None and template is not None:
        lengths = count_tokens(conversations, tokenizer, template)
        tokens_note = None
    elif tokens_note is None:
        tokens_note = "no tokenizer: pass --base (and --template) to count tokens"
    too_long = [i for i, n in enumerate(lengths or []) if n > max_seq_length]
    dropped = 0
    if drop_long and too_long:
        keep = sorted(set(range(len(conversations))) - set(too_long))
        if not keep:
            raise bad_input(f"{path}: all {len(conversations)} records are longer than --max-seq-length "
                            f"{max_seq_length} tokens; --drop-long would leave nothing.",
                            "Raise --max-seq-length.")
        conversations = [conversations[i] for i in keep]
        lengths = [lengths[i] for i in keep] if lengths is not None else None
        dropped = len(too_long)
    ratio = resolve_eval_ratio(eval_ratio, len(conversations))
    train_idx, eval_idx = split_eval(conversations, ratio, seed)
    tokens = None
    if lengths is not None:
        tokens = {"total": sum(lengths), "mean": round(sum(lengths) / len(lengths), 1),
                  "max": max(lengths), "min": min(lengths)}
    summary = DataSummary(
        path=str(path), format=dataset.format, template=getattr(template, "name", None),
        records=len(dataset.records), messages=sum(len(c) for c in dataset.conversations),
        turns=sum(1 for c in dataset.conversations for m in c if m["role"] == "assistant"),
        with_system=sum(1 for c in dataset.conversations if c[0]["role"] == "system"),
        duplicates=count_duplicates(dataset.conversations), tokens=tokens, tokens_note=tokens_note,
        max_seq_length=max_seq_length, too_long=len(too_long), dropped_long=dropped,
        stop_collisions=count_stop_collisions(dataset.conversations, template),
        eval_ratio=ratio, seed=seed, train_records=len(train_idx), eval_records=len(eval_idx),
        source=dataset.identity,
    )
    return PreparedData([conversations[i] for i in train_idx], [conversations[i] for i in eval_idx], summary)


# -- writing and reporting --------------------------------------------------------------------

def write_jsonl(path: str | Path, conversations: Sequence[Conversation]) -> Path:
    """``{"messages": [...]}`` per line, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for conv in conversations:
                f.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
    return path


def write_split(prepared: "PreparedData", train_path: Path, eval_path: Path) -> list[Path]:
    """Write the train split and, when there is one, the eval split; a stale eval file
    from an earlier run is removed (it must not be trained or evaluated on)."""
    written = [write_jsonl(train_path, prepared.train)]
    if prepared.eval:
        written.append(write_jsonl(eval_path, prepared.eval))
    elif Path(eval_path).exists():
        Path(eval_path).unlink()
    return written


def eval_path_beside(train_path: Path) -> Path:
    """``OUT.eval.jsonl`` for ``ftpack data -o OUT.jsonl``."""
    stem = train_path.name[: -len(".jsonl")] if train_path.name.endswith(".jsonl") else train_path.name
    return train_path.with_name(stem + ".eval.jsonl")


def read_messages_jsonl(path: str | Path) -> list[Conversation]:
    """Read back a normalised ``messages`` file (what training consumes): the one reader of
    data/train.jsonl and data/eval.jsonl, with the same checks and FILE:LINE errors as
    any dataset."""
    return load_dataset(path, "messages").conversations


def summary_rows(s: DataSummary) -> list[tuple[str, str]]:
    rows = identity_rows(s.source) or [("file", s.path)]
    rows += [("format", s.format), ("template", s.template or "(none chosen)"),
            ("records", str(s.records)), ("messages", str(s.messages)), ("assistant turns", str(s.turns)),
            ("with system prompt", str(s.with_system)), ("duplicates", str(s.duplicates))]
    if s.tokens:
        rows += [("tokens (total)", str(s.tokens["total"])),
                 ("tokens per record (mean / max)", f"{s.tokens['mean']} / {s.tokens['max']}"),
                 (f"longer than {s.max_seq_length} tokens", str(s.too_long))]
        if s.dropped_long:
            rows.append(("dropped (--drop-long)", str(s.dropped_long)))
    else:
        rows.append(("tokens", s.tokens_note or "not counted"))
    if s.template:
        rows.append(("containing stop strings", str(s.stop_collisions)))
    rows += [("train / eval", f"{s.train_records} / {s.eval_records} (eval ratio {s.eval_ratio:g}, seed {s.seed})")]
    rows += [(f"wrote {k}", v) for k, v in s.outputs.items()]
    return rows


def report_summary(s: DataSummary, reporter: Any) -> None:
    """The stats table plus warnings for long records and duplicates."""
    reporter.table("dataset", ("", "value"), summary_rows(s), data=s.as_dict())
    if s.too_long and not s.dropped_long:
        reporter.warn(f"{s.too_long} of {s.records} records are longer than --max-seq-length {s.max_seq_length} "
                      "tokens and will be truncated in training (their end, including the last answer, is cut).",
                      "Use --drop-long to drop them, or raise --max-seq-length.")
    if s.stop_collisions:
        reporter.warn(f"{s.stop_collisions} records contain a stop string or end-of-turn marker of the "
                      f"{s.template} template in their text; Ollama stops generating at those strings.",
                      "Remove the markers from the data, or choose another --template.")
    if s.duplicates:
        reporter.warn(f"{s.duplicates} records duplicate an earlier one (kept; duplicates stay on one side "
                      "of the eval split).")


# -- the pipeline stage -------------------------------------------------------------------------

#: Beside data/train.jsonl: the dataset summary (DataSummary.as_dict()).
STATS_FILE = "stats.json"


@dataclass
class BuildData:
    """What the data stage produced: the chosen chat format, the summary, the files."""

    template: Any  # ChatTemplate: chosen here, once per build
    summary: DataSummary
    outputs: list[Path]  # data/train.jsonl, data/eval.jsonl (when split), data/stats.json, data/vocab.gguf
    token_check: Any = None  # ftpack.training.token_check.TokenCheck
    ollama_base: dict[str, Any] | None = None  # a base from Ollama: its blob, quantization (OllamaBase.as_record)

    @property
    def metrics(self) -> dict[str, Any]:
        s = self.summary
        metrics = {"template": self.template.name, "format": s.format, "records": s.records,
                   "train_records": s.train_records, "eval_records": s.eval_records, "too_long": s.too_long,
                   "dropped_long": s.dropped_long, "duplicates": s.duplicates}
        if s.source is not None:
            metrics["dataset"] = s.source
        if self.token_check is not None:
            metrics.update(self.token_check.as_metrics())
        if self.ollama_base is not None:
            metrics["ollama_base"] = self.ollama_base
        if s.tokens:
            metrics["tokens"] = s.tokens["total"]
            metrics["max_tokens"] = s.tokens["max"]
        return metrics


def prepare_build_data(cfg: Any, layout: Any, reporter: Any) -> BuildData:
    """Validate ``cfg.data``, choose the chat template (once: everything later reads it back
    through :func:`ftpack.training.templates.template_of_build` or receives this object),
    count tokens with the base's tokenizer (no weights are fetched) and write the split
    into ``layout`` (a BuildLayout). Used by the build's data stage and `ftpack train`.
    """
    from ftpack.training.bases import resolve_tokenizer
    from ftpack.training.data_sources import SOURCE_HINT, source_of, source_options
    from ftpack.training.templates import choose_base_template, save_template

    if cfg.data is None:
        raise bad_input("No dataset given.", SOURCE_HINT)
    where = source_options(cfg)
    source_of(cfg.data, **where)  # a missing file or a setting that does not apply: before the tokenizer loads
    tokenizer, resolved = resolve_tokenizer(cfg.base, trust_remote_code=bool(getattr(cfg, "trust_remote_code", False)),
                                            allow_pickle=bool(getattr(cfg, "allow_pickle", False)),
                                            models_dir=getattr(cfg, "models_dir", None))
    template = choose_base_template(cfg.template, resolved, tokenizer, reporter=reporter)
    if resolved.ollama is not None and resolved.ollama.quantized:
        reporter.warn(resolved.ollama.quantization_note)
    prepared = prepare_data(cfg.data, fmt=cfg.format or "auto", template=template, tokenizer=tokenizer,
                            max_seq_length=cfg.max_seq_length, drop_long=bool(cfg.drop_long),
                            eval_ratio=cfg.eval_ratio, seed=cfg.seed, system=getattr(cfg, "system", None),
                            **where)
    outputs = write_split(prepared, layout.train_file, layout.eval_file)
    summary = prepared.summary
    summary.outputs = {p.name: str(p) for p in outputs}
    outputs.append(write_json(layout.data_dir / STATS_FILE, summary.as_dict()))
    report_summary(summary, reporter)
    if template.renders_ollama:  # not in templates/: template_of_build reads this copy
        outputs.append(save_template(template, layout.data_dir))
    ollama = resolved.ollama
    checked = check_build_tokenization(tokenizer, template, resolved.path, prepared, layout, reporter,
                                       seed=int(cfg.seed or 0), vocab=ollama.model_blob if ollama else None,
                                       name=getattr(cfg, "name", None))
    if ollama is None:
        outputs.append(Path(checked.vocab_gguf))
    return BuildData(template=template, summary=summary, outputs=outputs, token_check=checked,
                     ollama_base=ollama.as_record() if ollama is not None else None)


def check_build_tokenization(tokenizer: Any, template: Any, base_dir: Path, prepared: "PreparedData",
                             layout: Any, reporter: Any, *, seed: int = 0, vocab: Path | None = None,
                             name: str | None = None) -> Any:
    """Training ids == llama.cpp's ids on a sample of this dataset, with the vocabulary the
    build's GGUF will carry (:mod:`ftpack.training.token_check`); stops the build otherwise.
    ``vocab``: a GGUF that already carries it (a base from Ollama: its own blob). ``name``:
    the build's, from which the GGUF name comes (llama.cpp's tokenizer reads it)."""
    from ftpack.training.token_check import build_gguf_name, check_tokenization, write_vocab_gguf

    vocab = vocab or write_vocab_gguf(base_dir, layout.data_dir / "vocab.gguf",
                                      name=build_gguf_name(name, tokenizer) if name else None)
    conversations = [*prepared.train, *prepared.eval]
    if getattr(template, "gguf_jinja", ()):  # served by llama-server from the GGUF's Jinja template
        from ftpack.training.ollama_format import check_llama_cpp_renders_alike

        prompts = check_llama_cpp_renders_alike(template, conversations)
        reporter.info(f"Jinja check: llama.cpp's engine renders all {prompts} checked prompts exactly as training "
                      "does.")
    checked = check_tokenization(tokenizer, template, conversations, vocab, seed=seed)
    reporter.info(f"Tokenization check: {checked.checked} conversations ({checked.tokens} tokens, "
                  f"{checked.turns} served prompts) tokenize identically for training and for llama.cpp/Ollama.")
    return checked


def run_data_stage(ctx: Any):
    """Stage ``data``: :func:`prepare_build_data` into the build's data/ folder.

    Reads: config.data (and data_columns, data_config, data_split, data_revision), format,
    template, base, max_seq_length, drop_long, eval_ratio, seed (and trust_remote_code /
    allow_pickle to load the base's tokenizer).
    Writes: data/train.jsonl (main output), data/eval.jsonl (when there is an eval
    split), data/stats.json. Metrics: template (the chosen name, which training receives
    and saves beside its weights), format, records, train/eval records, tokens, too_long,
    dataset (its identity: a file's sha256, a folder's data-file digest, a hub dataset's id,
    commit, config and split).
    """
    from ftpack.core.runner import StageResult

    built = prepare_build_data(ctx.config, ctx.layout, ctx.reporter)
    return StageResult(outputs=built.outputs, main_output=built.outputs[0], metrics=built.metrics)
