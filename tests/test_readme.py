"""README.md is a user's page (issue 19): short, its links resolve, every figure it states
links to the docs/ page that explains it, every docs/ page is reachable from it, and its
two commands are the ones CI runs.

What counts as a *figure* (``FIGURE``): a number with a unit (``7 min 31 s``, ``1.5 GB``,
``6.07 GiB``, ``100%``, ``3.22×``, ``398 tokens/s``), a score (``15/20``, ``15 of 20``), a
comparison of two measurements (``0.0476 → 0.0279``, ``850 vs 1,207``) or a bound
(``< 0.02``). Versions (``Ollama 0.34.1``), names (``gemma4``, ``Q4_K_M``, ``7B``), counts of
things and flag values are not figures. A figure passes when the *unit* it stands in links
into docs/: its paragraph, its list item, or its table row (or the paragraph just above the
table, its caption). Code blocks state no figures.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_LINES = 300

#: top-level folders of this repository: a path in code that starts with one must exist
REPO_FOLDERS = ("ftpack", "tests", "scripts", "docs", "examples", "benchmarks", "requirements", "templates",
                "tools", ".ci")

UNIT = r"(?:ms|s|seconds?|min|minutes?|h|hours?|GB|GiB|MB|MiB|kB|KB|TB|%|×|x|tokens/s|GFLOP/s)"
NUMBER = r"\d[\d,]*(?:\.\d+)?"
FIGURE = re.compile(
    rf"(?<![\w.]){NUMBER}(?:\s?[–-]\s?{NUMBER})?\s?{UNIT}(?![\w/])"  # 7 min, 21–28 min, 1.5 GB, 3.22×
    rf"|(?<![\w./-])\d+/\d+(?![\w./])"  # 15/20, 46/46
    rf"|(?<![\w.])\d+ of \d+(?![\w.])"  # 15 of 20
    rf"|(?<![\w.]){NUMBER}\s?(?:→|vs\.?)\s?{NUMBER}"  # 0.0476 → 0.0279, 850 vs 1,207
    rf"|[<>≤≥]\s?{NUMBER}(?![\w.])"  # < 0.02
)
#: [text](target), ![alt](target), with an optional "title"
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: [label]: target
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
HTML_ANCHOR = re.compile(r"""<a\s+[^>]*(?:id|name)\s*=\s*["']([^"']+)["']""")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_PATH = re.compile(r"(?<![\w./~-])((?:%s)/[\w./-]*)" % "|".join(re.escape(f) for f in REPO_FOLDERS))


def markdown_pages() -> list[Path]:
    return [README] + sorted(p for p in DOCS.rglob("*.md"))


def split_code(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(prose lines as (line number, text), lines inside fenced code blocks)."""
    prose, code, fence = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            else:
                code.append(line)
            continue
        prose.append((number, line))
    return prose, code


def without_code_spans(line: str) -> str:
    return CODE_SPAN.sub(" ", line)


def link_targets(text: str) -> list[str]:
    """Every link target of a Markdown page (inline, reference-style, HTML), outside code."""
    prose, _ = split_code(text)
    targets = []
    for _, line in prose:
        plain = without_code_spans(line)
        targets += INLINE_LINK.findall(plain) + HTML_LINK.findall(plain)
    targets += REFERENCE_LINK.findall("\n".join(without_code_spans(line) for _, line in prose))
    return targets


def is_external(target: str) -> bool:
    return bool(re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def resolve(page: Path, target: str) -> tuple[Path, str]:
    """(file, anchor) a relative link target of ``page`` points to."""
    path, _, anchor = target.partition("#")
    path = urllib.parse.unquote(path)
    return ((page.parent / path).resolve() if path else page.resolve()), urllib.parse.unquote(anchor)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower case, punctuation dropped,
    spaces as hyphens (``What `scripts/setup.sh` does`` -> ``what-scriptssetupsh-does``)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if is_external(target):
            continue
        path, anchor = resolve(page, target)
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(root.resolve())}")
    return broken


@dataclass
class Unit:
    """A stretch of prose a figure must find its docs/ link in."""
    lines: list[tuple[int, str]]
    caption: "Unit | None" = None  # a table row's: the paragraph just above the table

    def links_to_docs(self, page: Path) -> bool:
        text = "\n".join(line for _, line in self.lines)
        for target in link_targets(text):
            if is_external(target):
                continue
            path, _ = resolve(page, target)
            if path == DOCS.resolve() or DOCS.resolve() in path.parents:
                return True
        return self.caption is not None and self.caption.links_to_docs(page)


def units(text: str) -> list[Unit]:
    """Paragraphs, list items and table rows of a page's prose (code blocks excluded)."""
    prose, _ = split_code(text)
    blocks: list[list[tuple[int, str]]] = [[]]
    previous = 0
    for number, line in prose:
        if not line.strip() or number != previous + 1:  # a blank line or a code block ends a block
            blocks.append([])
        if line.strip():
            blocks[-1].append((number, line))
        previous = number
    blocks = [b for b in blocks if b]
    result: list[Unit] = []
    before: Unit | None = None
    for block in blocks:
        if all(line.lstrip().startswith("|") for _, line in block):
            result += [Unit([row], caption=before) for row in block]
            before = None
            continue
        items: list[list[tuple[int, str]]] = []
        for number, line in block:
            if LIST_ITEM.match(line) or not items:
                items.append([])
            items[-1].append((number, line))
        units_here = [Unit(item) for item in items]
        result += units_here
        before = Unit(block)
    return result


def unlinked_figures(page: Path, text: str | None = None) -> list[str]:
    """'LINE: figure' for every figure of the page whose unit does not link into docs/."""
    text = page.read_text(encoding="utf-8") if text is None else text
    missing = []
    for unit in units(text):
        figures = [(n, f.group(0)) for n, line in unit.lines for f in FIGURE.finditer(without_code_spans(line))
                   if not HEADING.match(line)]
        if figures and not unit.links_to_docs(page):
            missing += [f"{page.name}:{n}: {figure!r}" for n, figure in figures]
    return missing


# --- the README ---------------------------------------------------------------------------


def test_readme_is_at_most_300_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, (f"README.md has {len(lines)} lines (at most {MAX_LINES}): move measurements "
                                     "and their history to docs/ and link to them")


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    assert broken_links(page) == []


def test_every_figure_in_the_readme_links_to_the_docs_page_that_explains_it():
    assert unlinked_figures(README) == []


def test_every_docs_file_is_linked_from_the_readme():
    linked = {resolve(README, t)[0] for t in link_targets(README.read_text(encoding="utf-8")) if not is_external(t)}
    not_linked = [str(p.relative_to(ROOT)) for p in sorted(DOCS.rglob("*")) if p.is_file() and p.resolve() not in linked]
    assert not_linked == [], "docs/ files the README does not link to"


def test_the_two_commands_are_in_the_readme_and_ci_runs_its_test_command():
    text = README.read_text(encoding="utf-8")
    for label, command in (("**Set up and run the main job**", "bash scripts/demo.sh"),
                           ("**Set up and run the tests**", "bash scripts/test.sh")):
        assert label in text
        after = text[text.index(label):]
        block = re.search(r"^```\n(.*?)\n```$", after, re.M | re.S)
        assert block and block.group(1) == command, (label, block and block.group(1))
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == "bash scripts/test.sh", ci  # CI runs exactly the README's test command
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert (ROOT / script).is_file()


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_code_exist(page):
    """`ftpack/ollama/renderers.py`, `tests/ollama_double/`, examples/… named in a page exist."""
    prose, code = split_code(page.read_text(encoding="utf-8"))
    spans = [m.group(2) for _, line in prose for m in CODE_SPAN.finditer(line)]
    named = {p.rstrip(".") for text in spans + code for p in CODE_PATH.findall(text)}
    missing = sorted(p for p in named if "<" not in p and "*" not in p and not (ROOT / p).exists())
    assert missing == []


# --- the checks themselves ----------------------------------------------------------------


def test_figure_check_finds_figures_and_accepts_them_only_next_to_a_docs_link():
    page = README
    text = "\n".join([
        "# t",
        "",
        "Set-up took 7 min 31 s here, or 8 minutes.",  # 3: unlinked
        "",
        "The demo scores 15 of 20 and",  # 5: linked in the same paragraph
        "trains at 398 tokens/s ([the demo](docs/benchmarks.md#the-demo)).",
        "",
        "- 3.22× faster,",  # 8: a list item without a link, though its neighbour has one
        "  really.",
        "- 46/46 tokenizer cases ([t](docs/tokenization.md)).",
        "",
        "Measured ([quantization](docs/quantization.md)):",
        "",
        "| type | size |",
        "|---|---|",
        "| Q4_K_M | 105.5 MB |",  # a row: the caption links
        "",
        "| a | b |",
        "|---|---|",
        "| x | 0.0476 → 0.0279 |",  # 20: no caption link
        "",
        "Ollama 0.34.1, Python 3.11, gemma4, Q4_K_M, 7B, `--lr 2e-4`, exit code 2, 104 packages.",
        "",
        "Unrelated ([outside](https://example.com/docs/x)): 9.8 MB.",  # 24: an external link is not docs/
        "",
        "```",
        "took 5 min",  # code: not prose
        "```",
        "",
        "| max |Δlogit| < 0.02 | [a](docs/architectures.md) |",
    ])
    assert unlinked_figures(page, text) == [
        "README.md:3: '7 min'",
        "README.md:3: '31 s'",
        "README.md:3: '8 minutes'",
        "README.md:8: '3.22×'",
        "README.md:20: '0.0476 → 0.0279'",
        "README.md:24: '9.8 MB'",
    ]


def test_readme_checks_fail_on_the_long_readme_they_replace(tmp_path):
    """The line limit and the figure rule reject a README like the 615-line one of before
    (measurement history inline, figures without a docs/ link)."""
    history = ["# ftpack", "", "## Training speed on CPU", ""]
    history += [f"Run {i}: {100 + i} tokens/s, peak RSS 3.{i % 10} GB, {i % 7 + 2} min {i % 60} s." for i in range(400)]
    text = "\n".join(history) + "\n"
    assert len(text.splitlines()) > MAX_LINES
    assert len(unlinked_figures(README, text)) >= 400


def test_link_checks_see_missing_files_and_headings(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## What `scripts/setup.sh` does\n\n## Today's Ollama: x\n"
                                            "\n## Today's Ollama: x\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md) [ok](docs/a.md#what-scriptssetupsh-does) [ok](docs/a.md#todays-ollama-x-1) "
                    "[bad](docs/b.md) [bad](docs/a.md#nope) [ok](#top) `[not a link](docs/c.md)` "
                    "[ext](https://example.com/x.md#y)\n\n# Top\n", encoding="utf-8")
    assert broken_links(page, root=tmp_path) == ["docs/b.md: no such file",
                                                 "docs/a.md#nope: no heading #nope in docs/a.md"]
