"""`ftpack doctor`: what this machine has, and how to fix what it lacks.

Each check is a row, never a crash. Checks that load native code (torch, bitsandbytes,
llama.cpp) run in a child process with a timeout, so a broken install becomes a
"missing" row instead of a dead CLI.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from ftpack.core.atomic import human_bytes
from ftpack.core.report import get_reporter

OK, WARN, MISSING = "ok", "warning", "missing"


@dataclass
class Check:
    """One row of the doctor table."""

    name: str
    status: str  # ok | warning | missing
    value: str
    hint: str = ""


def _version_tuple(v: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def check_python() -> Check:
    v = platform.python_version()
    if sys.version_info < (3, 10):
        return Check("Python", MISSING, v, "ftpack needs Python >= 3.10.")
    return Check("Python", OK, f"{v} ({sys.executable})")


def check_os() -> Check:
    return Check("OS", OK, f"{platform.system()} {platform.release()} ({platform.machine()})")


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def check_cpu_ram() -> Check:
    cores = os.cpu_count() or 0
    ram = _total_ram()
    value = f"{cores} cores, {human_bytes(ram) if ram else '? RAM'}"
    if ram is not None and ram < 8e9:
        return Check("CPU / RAM", WARN, value, "Less than 8 GB of RAM: only very small models will fit.")
    return Check("CPU / RAM", OK, value)


def check_disk(folder: Path) -> Check:
    probe = folder.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    value = f"{human_bytes(free)} free in {probe}"
    if free < 10e9:
        return Check("Disk (builds)", WARN, value,
                     "A 7B build needs ~30 GB (merged 16-bit copy, F16 GGUF, quantized GGUF).")
    return Check("Disk (builds)", OK, value)


def check_dependencies() -> list[Check]:
    from importlib import metadata

    from ftpack.core.manifest import required_libraries

    rows = []
    for dist, minimum in required_libraries().items():
        try:
            v = metadata.version(dist)
        except metadata.PackageNotFoundError:
            rows.append(Check(dist, MISSING, "not installed", f"pip install '{dist}>={minimum}'"))
            continue
        if _version_tuple(v) < _version_tuple(minimum):
            rows.append(Check(dist, WARN, v, f"ftpack is tested with {dist} >= {minimum}: "
                                             f"pip install -U '{dist}>={minimum}'"))
        else:
            rows.append(Check(dist, OK, v))
    return rows


def check_tested_set() -> Check:
    """Installed versions against the tested set (requirements/pinned.txt): a newer or older
    release than the suite passed with is where drift starts."""
    from ftpack.core.pins import PINNED_FILE, compare, installed_versions, tested_set

    pinned = tested_set()
    if pinned is None:
        return Check("Tested versions", WARN, f"{PINNED_FILE} is missing from this installation")
    installed = installed_versions()
    # Only packages of the tested set that are installed at another version: packages a user
    # has beside ftpack, and test tools a user need not have, are not drift.
    differ = [d for d in compare(installed, pinned) if d.installed and d.pinned]
    if not differ:
        same = sum(1 for n in pinned if n in installed)
        return Check("Tested versions", OK, f"{same} installed packages are the tested versions")
    shown = ", ".join(d.describe() for d in differ[:6]) + (f", and {len(differ) - 6} more" if len(differ) > 6 else "")
    pins = " ".join(f"'{d.name}=={d.pinned}'" for d in differ[:6])
    return Check("Tested versions", WARN, f"{len(differ)} differ from the tested set: {shown}",
                 f"In a checkout, `bash scripts/setup.sh` installs exactly the tested set; "
                 f"elsewhere: pip install {pins}")


_PROBE = r"""
import json, sys
what = sys.argv[1]
out = {}
if what == "torch":
    import torch
    out["torch"] = torch.__version__
    if torch.cuda.is_available():
        out["cuda"] = [
            {"name": torch.cuda.get_device_name(i),
             "memory": torch.cuda.get_device_properties(i).total_memory,
             "bf16": torch.cuda.is_bf16_supported()}
            for i in range(torch.cuda.device_count())]
        out["cuda_version"] = torch.version.cuda
    out["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
elif what == "bnb":
    import torch, bitsandbytes as bnb
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                              compress_statistics=True).to(dev)
    y = layer(torch.randn(2, 64, device=dev))
    out = {"device": dev, "version": bnb.__version__, "ok": bool(torch.isfinite(y).all())}
elif what == "llama_cpp":
    import llama_cpp
    out = {"version": llama_cpp.__version__,
           "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
           "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}
print("FTPACK_PROBE" + json.dumps(out))
"""


def _probe(what: str, timeout: float = 120) -> tuple[dict | None, str]:
    """Run one native check in a child process; (result, error text)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, what], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f}s"
    for line in proc.stdout.splitlines():
        if line.startswith("FTPACK_PROBE"):
            return json.loads(line[len("FTPACK_PROBE"):]), ""
    err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return None, err


def check_torch_device() -> Check:
    info, err = _probe("torch")
    if info is None:
        return Check("Torch device", MISSING, f"torch does not load: {err}", "pip install torch")
    if info.get("cuda"):
        gpus = ", ".join(f"{g['name']} ({human_bytes(g['memory'])}{', bf16' if g['bf16'] else ''})"
                         for g in info["cuda"])
        return Check("Torch device", OK, f"CUDA {info.get('cuda_version')}: {gpus}")
    if info.get("mps"):
        return Check("Torch device", OK, "Apple MPS", "bitsandbytes 4-bit (QLoRA) is not available on MPS.")
    return Check("Torch device", WARN, "CPU only (no CUDA GPU)",
                 "Training runs on the CPU: fine for small models (the default smollm2-135m); "
                 "use a CUDA GPU for 7B models.")


def check_bnb() -> Check:
    info, err = _probe("bnb")
    if info is None:
        return Check("bitsandbytes 4-bit", MISSING, f"cannot run a 4-bit layer: {err}",
                     "QLoRA is unavailable; use --method lora, or pip install -U bitsandbytes.")
    return Check("bitsandbytes 4-bit", OK if info["ok"] else WARN,
                 f"NF4 layer runs on {info['device']} (bitsandbytes {info['version']})")


def check_llama_cpp() -> Check:
    info, err = _probe("llama_cpp")
    if info is None:
        return Check("llama.cpp", MISSING, f"llama-cpp-python does not load: {err}",
                     "pip install llama-cpp-python (compiles llama.cpp; needs cmake and a C++ compiler).")
    features = " ".join(x for x in info["system_info"].split("|") if "= 1" in x or "=1" in x)[:80]
    return Check("llama.cpp", OK, f"llama-cpp-python {info['version']}"
                 + (", GPU offload" if info["gpu_offload"] else ", CPU") + (f"; {features}" if features else ""))


def check_ollama(host: str | None = None, timeout: float = 3.0) -> Check:
    from ftpack.ollama.probe import probe_server

    probe = probe_server(host, timeout=timeout)
    if not probe.reachable:
        return Check("Ollama server", WARN, f"not reachable at {probe.host} ({probe.reason})",
                     "Start it with `ollama serve`, or set OLLAMA_HOST; `ftpack build --offline` writes "
                     "the model store directly.")
    return Check("Ollama server", OK, f"version {probe.version} at {probe.host}")


def check_hf_cache() -> Check:
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    value = f"{hub}" + ("; offline mode (HF_HUB_OFFLINE)" if offline else "; online")
    return Check("Hugging Face cache", OK, value,
                 "Offline: only cached models, local folders, GGUF files and smollm2-135m work." if offline else "")


def run_checks(builds_dir: Path = Path("builds"), host: str | None = None) -> list[Check]:
    """Every doctor row, in display order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # the slow probes run side by side
        slow = [pool.submit(f) for f in (check_torch_device, check_bnb, check_llama_cpp,
                                          lambda: check_ollama(host))]
        rows = [check_python(), check_os(), check_cpu_ram(), check_disk(builds_dir)]
        rows += check_dependencies()
        rows.append(check_tested_set())
        rows += [f.result() for f in slow]
    rows.append(check_hf_cache())
    return rows


def checks_to_json(rows: list[Check]) -> list[dict]:
    return [asdict(r) for r in rows]


@click.command()
@click.option("--out", "builds_dir", type=click.Path(path_type=Path), default=Path("builds"),
              show_default=True, help="Where builds go (for the free-disk row).")
@click.option("--host", default=None, help="Ollama server URL (default: OLLAMA_HOST or http://127.0.0.1:11434).")
def doctor(builds_dir: Path, host: str | None) -> None:
    """Check Python, libraries, devices, llama.cpp and the Ollama server."""
    reporter = get_reporter()
    rows = run_checks(builds_dir, host)
    style = {OK: "[green]OK[/]", WARN: "[yellow]warning[/]", MISSING: "[red]missing[/]"}
    from rich.text import Text

    reporter.table("ftpack doctor", ("check", "status", "value", "hint"),
                   [(r.name, Text.from_markup(style[r.status]), r.value, r.hint) for r in rows],
                   data=checks_to_json(rows))
    missing = sum(r.status == MISSING for r in rows)
    warnings = sum(r.status == WARN for r in rows)
    reporter.final(f"{len(rows) - missing - warnings} ok, {warnings} warnings, {missing} missing",
                   ok=len(rows) - missing - warnings, warnings=warnings, missing=missing)
