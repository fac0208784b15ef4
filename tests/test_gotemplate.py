"""ftpack's Python renderer of Ollama TEMPLATEs equals Go's real text/template, byte for byte.

``ftpack.ollama.gotemplate`` interprets Go's template language so that training on an
Ollama model's own chat format needs no Go toolchain on the user's machine. Every test
here renders the same (template, conversation) with it and with tests/gotemplate — Go's
``text/template`` driven the way Ollama's template package drives it — and demands the
same text, or an error from both: on Ollama's own shipped templates, on templates written
to exercise each construct of the language (trim markers, comments, variables and scopes,
else-if chains, range/break/continue, with, define/template/block, every builtin, Ollama's
functions, missing keys, legacy .Prompt/.Response templates cut after .Response), on
conversations with awkward text, and on randomly generated templates.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ftpack.ollama.gotemplate import GoTemplateError, parse_ollama_template, render_prompt
from ollama_double.fixtures import go_renderer  # noqa: F401

HERE = Path(__file__).parent

S = {"role": "system", "content": "You are terse."}
S2 = {"role": "system", "content": "Second system line."}
U1 = {"role": "user", "content": "Hello, how are you?"}
A1 = {"role": "assistant", "content": "Fine. And you?"}
U2 = {"role": "user", "content": "  Odd {{ text }} <b>&amp;</b> \"quoted\" — ünïcødé ✓\n\n  "}
A2 = {"role": "assistant", "content": "Answer with\ttabs\nand lines."}
U3 = {"role": "user", "content": "Thanks!"}
T1 = {"role": "tool", "content": "{\"ok\": true}"}

CONVERSATIONS = {
    "user": [U1],
    "system-user": [S, U1],
    "multi": [U1, A1, U2, A2, U3],
    "system-multi": [S, U1, A1, U2],
    "ends-assistant": [S, U1, A1],
    "two-systems": [S, S2, U1, A1, U2],
    "same-role-runs": [U1, U2, A1, A2, U3],
    "tool": [U1, A1, T1, U3],
    "empty": [],
}

# Templates written for these tests: each exercises part of the language Ollama's library
# templates use (and some they rarely do), in the shapes Ollama's models ship.
TEMPLATES = {
    "messages-last-flag": """{{- if .System }}<|sys|>{{ .System }}<|end|>
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|user|>{{ .Content }}<|end|>
{{ if $last }}<|assistant|>{{ end }}
{{- else if eq .Role "assistant" }}<|assistant|>{{ .Content }}{{ if not $last }}<|end|>
{{ end }}
{{- else if eq .Role "tool" }}<|tool|>{{ .Content }}<|end|>
{{ end }}
{{- end }}""",
    "tools-and-thinking": """{{- if or .System .Tools }}SYSTEM: {{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }} tools: {{ json .Tools }}{{ end }}
{{ end }}
{{- range .Messages }}
{{- if and (eq .Role "assistant") .ToolCalls }}CALLS {{ range .ToolCalls }}{{ .Function.Name }}{{ end }}
{{- else if eq .Role "assistant" }}A: {{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}
{{ else }}{{ .Role | printf "%s" }}: {{ .Content }}
{{ end }}
{{- end }}{{ if $.IsThinkSet }}think={{ $.Think }}{{ end }}A:""",
    "system-in-last-user": """{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and (eq (len (slice $.Messages $index)) 1) $.System }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}""",
    "variables-and-scopes": """{{- $sys := "" }}{{ $n := 0 }}
{{- range .Messages }}
{{- if eq .Role "system" }}{{ $sys = printf "%s|%s" $sys .Content }}{{ continue }}{{ end }}
{{- $n = len $.Messages }}{{ $inner := .Role }}
{{- with $sys }}<<{{ . }}>>{{ $sys = "" }}{{ end }}
{{- $inner }}({{ $n }}): {{ .Content }}
{{ end }}
{{- if gt $n 2 }}long{{ else if eq $n 2 }}two{{ else }}short{{ end }} end""",
    "break-continue-else": """{{- range $i, $m := .Messages }}{{ if ge $i 3 }}{{ break }}{{ end }}
{{- if eq $m.Role "assistant" }}{{ continue }}{{ end }}[{{ $i }}:{{ $m.Role }}]{{ else }}no messages{{ end }}
{{- range .Tools }}never{{ else }} no tools{{ end }}
{{- with .Tools }}never{{ else with .System }} sys={{ . }}{{ else }} nosys{{ end }}""",
    "define-template-block": """{{- define "turn" }}<{{ .Role }}>{{ .Content }}</{{ .Role }}>{{ end }}
{{- block "head" . }}HEAD({{ len .Messages }}){{ end }}
{{- range .Messages }}{{ template "turn" . }}{{ end }}
{{- template "tail" "x" }}
{{- define "tail" }}TAIL:{{ . }}{{ end }}""",
    "builtins": """{{- $m := index .Messages 0 -}}
first={{ $m.Role }} len={{ len $m.Content }} bytes2={{ slice $m.Content 0 2 }} idx={{ index $m.Content 1 }}
print={{ print 1 2 "a" "b" 3 true nil }} println={{ println "x" 1 }}
printf={{ printf "%d|%5s|%-4s|%q|%v|%t|%x|%05d|%.2f|%s" 42 "ab" "c" "q\\"t" .System true 255 -7 3.14159 }}
{{- printf "%s %d" "only" }} {{ printf "%d" 1 2 }}
cmp={{ lt 1 2 }} {{ le "a" "b" }} {{ gt 2.5 1.5 }} {{ ge 1 1 }} {{ ne "a" "b" }} {{ eq 1 2 3 1 }}
and={{ and 1 0 2 }} or={{ or 0 "" "x" }} not={{ not .Tools }} {{ and .System "yes" }} {{ or .Tools .Response "fallback" }}
html={{ html "<a href='x'>&\\"</a>" }} url={{ urlquery "a b&c/é" }}
floats={{ 1.5 }} {{ 1e6 }} {{ 0.0001 }} {{ 0.00001 }} {{ 123456789.0 }} {{ 1e21 }} {{ 100000000000000000000.0 }} {{ 2.0 }}
ints={{ 0x1F }} {{ 'a' }} {{ -3 }} {{ 1_000 }}
json={{ json .System }} {{ json .Messages }} {{ json 1.5 }} {{ json "<&>" }} {{ json nil }} {{ json .Tools }}
missing={{ .Suffix }}|{{ if .Suffix }}yes{{ else }}no{{ end }}|{{ .Think }}|{{ .ThinkLevel }}|{{ $.Response }}|
{{- /* a comment */ -}}
pipe={{ .System | len }} {{ "abc" | printf "%s-%s" "x" }} {{ (index .Messages 0).Content | len }}
{{- /* trailing */}}""",
    "trim-markers": """a  {{- " b " -}}  c
  {{- "d" }}   {{ "e" -}}
  f {{/* c1 */}} g {{- /* c2 */}} h {{- /* c3 */ -}}
 i {{ "j" }}{{ 1 -}} {{- -2 }}""",
    "legacy-prompt-response": """{{ if .System }}<|system|>
{{ .System }}</s>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}</s>
{{ end }}<|assistant|>
{{ .Response }}</s>
""",
    "legacy-no-response": """{{ if .System }}SYS {{ .System }}
{{ end }}USER {{ .Prompt }}
ASSISTANT """,
    "legacy-response-in-if": """{{- if .Prompt }}Q: {{ .Prompt }}
{{ end }}A: {{ if .Response }}{{ .Response }} END{{ end }}
after""",
    "legacy-printf-before-response": """{{ printf "[%s]" .Prompt }} {{ .Response }} tail {{ json .Prompt }}""",
    "errors-field-of-nil": """{{ range .Messages }}{{ .Content }}{{ end }}{{ .Tools.Function }}""",
    "errors-unknown-message-field": """{{ range .Messages }}{{ .Name }}{{ end }}""",
    "errors-bad-compare": """{{ range .Messages }}{{ if eq .Role 1 }}x{{ end }}{{ end }}""",
    "errors-index-range": """{{ index .Messages 10 }}""",
    "errors-printf-format": """{{ printf .Tools }}{{ .Messages }}""",
    # .Tools is a typed nil slice in Ollama (template.Values.Tools []api.Tool): len 0, not an error
    "len-tools": """{{ len .Tools }}|{{ range .Messages }}{{ .Role }} {{ end }}|{{ json .Tools }}|{{ .Tools }}""",
}

SYNTAX_PROBES = [  # mostly refused by Go; each must be refused (or parsed) by both alike
    "{{ .Messages", "{{ if .System }}x", "{{ end }}", "{{ else }}", "{{ $x }}{{ .Messages }}",
    "{{ nosuchfunc 1 }}{{ .Messages }}", "{{ range .Messages }}{{ else }}{{ else }}{{ end }}",
    "{{ break }}{{ .Messages }}", "{{ .Messages }}{{ template \"x\" }}", "{{ (1 }}", "{{ 1) }}",
    "{{ \"unterminated }}", "{{ 3x }}", "{{ .Messages | 1 }}", "{{ if }}{{ end }}", "{{/* open",
    "{{ .A.B.C }} {{ $ := 1 }}", "{{ range $a, $b, $c := .Messages }}{{ end }}",
    "{{ /* a comment needs no space before it */ }}", "{{/* and none after it */ }}",
]


def _both(go_renderer, jobs):
    """Go's results and ours for [(template, messages)].

    Where Ollama's deleteNode would panic (a legacy template cut after a .Response inside
    an if/else), ftpack refuses; Go's renderer crashes, so such a job is run on its own
    and its crash counts as Go's error.
    """
    ours = []
    for template, messages in jobs:
        try:
            ours.append({"prompt": render_prompt(template, messages)})
        except GoTemplateError as exc:
            ours.append({"error": str(exc)})
    panics = {i for i, r in enumerate(ours) if "cannot cut" in r.get("error", "")}
    batch = go_renderer.render_many([j for i, j in enumerate(jobs) if i not in panics])
    theirs = []
    for i, job in enumerate(jobs):
        if i in panics:
            try:
                theirs.append(go_renderer.render_many([job])[0])
            except RuntimeError as exc:
                theirs.append({"error": f"Go panics: {exc}"})
        else:
            theirs.append(batch.pop(0))
    return theirs, ours


def _compare(jobs, theirs, ours, labels):
    failures = []
    for label, (template, _), go, py in zip(labels, jobs, theirs, ours):
        if bool(go.get("error")) != bool(py.get("error")):
            failures.append(f"{label}: Go {'error ' + go['error'] if go.get('error') else 'rendered'}, "
                            f"ftpack {'error ' + py['error'] if py.get('error') else 'rendered'}")
        elif not go.get("error") and go["prompt"] != py["prompt"]:
            failures.append(f"{label}:\n  go: {go['prompt']!r}\n  py: {py['prompt']!r}")
    return failures


def test_ollamas_shipped_templates_render_identically(go_renderer):
    data = json.loads((HERE / "gotemplate" / "ollama_conformance.json").read_text())
    jobs, labels = [], []
    for name, entry in sorted(data["templates"].items()):
        for conv_name, conv in CONVERSATIONS.items():
            jobs.append((entry["template"], conv))
            labels.append(f"{name}/{conv_name}")
    assert len(jobs) >= 150
    theirs, ours = _both(go_renderer, jobs)
    assert not _compare(jobs, theirs, ours, labels)
    assert sum(1 for r in theirs if not r.get("error")) >= 140  # most render: the comparison is of text


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_language_constructs_render_identically(go_renderer, name):
    jobs = [(TEMPLATES[name], conv) for conv in CONVERSATIONS.values()]
    theirs, ours = _both(go_renderer, jobs)
    failures = _compare(jobs, theirs, ours, [f"{name}/{c}" for c in CONVERSATIONS])
    assert not failures, "\n".join(failures)
    if name.startswith("errors-"):
        assert any(r.get("error") for r in theirs), "an error case that Go renders tests nothing"
    else:
        assert any(not r.get("error") for r in theirs)


def test_tools_is_a_typed_empty_list_as_in_ollama(go_renderer):
    """Ollama passes .Tools as a typed nil slice ([]api.Tool): `len .Tools` renders 0, `if .Tools`
    is false, and printing it gives []; an untyped nil would make len fail."""
    from ftpack.ollama.gotemplate import parse_ollama_template

    template = ("{{ len .Tools }}|{{ if .Tools }}tools{{ else }}none{{ end }}|{{ .Tools }}|{{ json .Tools }}|"
                "{{ range .Messages }}{{ .Content }}{{ end }}")
    msgs = [{"role": "user", "content": "Hi"}]
    assert go_renderer.render(template, msgs) == "0|none|[]|null|Hi"
    assert parse_ollama_template(template).render(msgs) == "0|none|[]|null|Hi"


def test_templates_go_refuses_are_refused(go_renderer):
    mismatches, refused = [], 0
    for template in SYNTAX_PROBES:
        go_error = go_renderer.parse_error(template)
        refused += bool(go_error)
        try:
            parse_ollama_template(template)
            ours = None
        except GoTemplateError as exc:
            ours = str(exc)
        if bool(go_error) != bool(ours):
            mismatches.append(f"{template!r}: Go {go_error or 'parses'}, ftpack {ours or 'parses'}")
    assert not mismatches, "\n".join(mismatches)
    assert refused >= len(SYNTAX_PROBES) - 2


def test_repo_templates_render_identically(go_renderer):
    """ftpack's own templates/*.toml Ollama TEMPLATEs (those registered with every build)."""
    from ftpack.training.templates import list_templates

    jobs, labels = [], []
    for tpl in list_templates():
        for conv_name, conv in CONVERSATIONS.items():
            jobs.append((tpl.ollama_template, conv))
            labels.append(f"{tpl.name}/{conv_name}")
    theirs, ours = _both(go_renderer, jobs)
    assert not _compare(jobs, theirs, ours, labels)


def test_a_response_cut_inside_a_branch_with_else_is_refused():
    """Ollama's deleteNode would panic there (a nil type assertion): no prompt exists."""
    tpl = parse_ollama_template("{{ if .Prompt }}Q {{ .Prompt }} A {{ .Response }}{{ else }}none{{ end }}")
    with pytest.raises(GoTemplateError, match="cannot cut"):
        tpl.render([U1])


# -- random templates ------------------------------------------------------------------------

_ATOMS = [".System", ".Response", "$.System", "(len .Messages)", '"lit"', "1", "0", "2.5", "true", "nil", ".Tools",
          ".Suffix", "(index .Messages 0).Role", "(slice .System 1)", "(len .System)", "$x"]
_MSG_ATOMS = [".Role", ".Content", ".Thinking", ".ToolCalls", "$i", "$.System", '"user"', "(len .Content)", "$x"]
_FUNCS = ["eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "print", "printf \"%v-%v\"", "json",
          "html", "index", "slice"]


def _random_expr(rng: random.Random, atoms: list[str], depth: int = 0) -> str:
    if depth > 1 or rng.random() < 0.4:
        return rng.choice(atoms)
    fn = rng.choice(_FUNCS)
    nargs = {"not": 1, "len": 1, "json": 1, "html": 1}.get(fn, rng.choice([1, 2, 2, 3]))
    args = " ".join(_random_expr(rng, atoms, depth + 1) for _ in range(nargs))
    expr = f"({fn} {args})"
    if rng.random() < 0.2:
        expr = f"{args.split(' ')[0]} | {fn}"
    return expr


def _random_block(rng: random.Random, atoms: list[str], depth: int = 0, in_range: bool = False) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        dash_l = rng.choice(["", "- "])
        dash_r = rng.choice(["", " -"])
        if choice < 0.3:
            parts.append(rng.choice(["T", " ", "\n", "  x\n", "<|tag|>", "\t"]))
        elif choice < 0.55:
            parts.append(f"{{{{{dash_l}{_random_expr(rng, atoms)}{dash_r}}}}}")
        elif choice < 0.65:
            parts.append(f"{{{{{dash_l}$x = {_random_expr(rng, atoms)}{dash_r}}}}}")
        elif choice < 0.8 and depth < 2:
            kw = rng.choice(["if", "with", "if"])
            body = _random_block(rng, atoms if kw == "if" else atoms + ["."], depth + 1, in_range)
            other = _random_block(rng, atoms, depth + 1, in_range) if rng.random() < 0.5 else None
            cond = _random_expr(rng, atoms)
            parts.append(f"{{{{{dash_l}{kw} {cond}{dash_r}}}}}{body}"
                         + (f"{{{{else}}}}{other}" if other else "") + "{{end}}")
        elif choice < 0.92 and depth < 2:
            body = _random_block(rng, _MSG_ATOMS, depth + 1, True)
            parts.append(f"{{{{{dash_l}range $i, $m := .Messages{dash_r}}}}}{body}{{{{end}}}}")
        elif in_range:
            parts.append(rng.choice(["{{ break }}", "{{ continue }}", "{{- if $i }}{{ continue }}{{ end }}"]))
        else:
            parts.append("{{ /* c */ }}" if rng.random() < 0.5 else "{{- /* c */ -}}")
    return "".join(parts)


def test_random_templates_render_identically(go_renderer):
    """Generated templates: every outcome (text or error) equals Go's."""
    rng = random.Random(20261130)
    jobs, labels = [], []
    for n in range(300):
        template = "{{ $x := .System }}" + _random_block(rng, _ATOMS)
        if rng.random() < 0.7:
            template += "{{ if .Messages }}{{ end }}"  # the modern data (Messages) most of the time
        if "Messages" not in template:  # legacy: Go's deleteNode panics on a .Response in an if/else
            template = template.replace(".Response", ".Prompt")
        conv = rng.choice(list(CONVERSATIONS.values()))
        jobs.append((template, conv))
        labels.append(f"random {n}: {template!r}")
    theirs, ours = _both(go_renderer, jobs)
    failures = _compare(jobs, theirs, ours, labels)
    assert not failures, f"{len(failures)} differ:\n" + "\n".join(failures[:10])
    rendered = sum(1 for r in theirs if not r.get("error"))
    assert rendered >= 100, f"only {rendered} of {len(jobs)} random templates render: the generator tests little"
