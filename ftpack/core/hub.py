"""Is the Hugging Face hub reachable? One quick request, before any download, instead of
huggingface_hub's retries.

When the hub cannot be reached, ``hf_hub_download`` retries its metadata request five
times with back-off (1 + 2 + 4 + 8 + 8 s), logging "Retrying in 1s [Retry 1/5]" each
time, so a build on a hub id said nothing useful for about 25 s (a minute when the
address swallows packets). :func:`probe_hub` asks the endpoint once, through
huggingface_hub's own HTTP client (its proxies, certificates and client factory), with a
short timeout and no retry; :func:`unreachable_error` is the one message a user then
sees: the hub is not reachable, the model is not in the local cache, and what to do.

``HF_ENDPOINT`` names the hub (a mirror); ``HF_HUB_ETAG_TIMEOUT`` (huggingface_hub's
metadata timeout) shortens the probe's, which is at most :data:`PROBE_TIMEOUT_S`.
"""

from __future__ import annotations

import os

from ftpack.core.errors import FtpackError, bad_input

#: The longest wait for the hub's answer (connect and read) before calling it unreachable.
PROBE_TIMEOUT_S = 5.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub ftpack downloads from: ``HF_ENDPOINT``, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or DEFAULT_ENDPOINT


def probe_timeout() -> float:
    try:
        configured = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT_S)
    except ValueError:
        configured = PROBE_TIMEOUT_S
    return min(max(configured, 0.1), PROBE_TIMEOUT_S)


def probe_hub(timeout_s: float | None = None) -> BaseException | None:
    """None when the hub answers (any HTTP status: it is there); else the error of the one
    HEAD request to its endpoint (no retries)."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(hub_endpoint(), timeout=probe_timeout() if timeout_s is None else timeout_s,
                           follow_redirects=False)
    except Exception as exc:  # httpx's connect / timeout / protocol errors, TLS: not reachable
        return exc
    return None


def describe(exc: BaseException) -> str:
    """An unreachable hub's error in a few words."""
    text = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
    if "timeout" in type(exc).__name__.lower():
        detail = f"no answer within {probe_timeout():g} s ({detail})"
    return detail


def unreachable_error(model_id: str, exc: BaseException, *, offline_base: str) -> FtpackError:
    """Exit 2: ``model_id`` must come from the hub, which is unreachable, and it is not in the
    local cache; ``offline_base``: a ``--base`` that needs no hub (the embedded model's name)."""
    from ftpack.core.locations import hf_hub_cache

    return bad_input(
        f"Base model {model_id!r} is not in the local Hugging Face cache, and the hub ({hub_endpoint()}) is "
        f"unreachable: {describe(exc)}.",
        "Check the network, or set HF_ENDPOINT to a hub mirror you can reach; or train from a local model folder, "
        f"a .gguf file or --base {offline_base} (no hub needed). A model downloaded before (cache: {hf_hub_cache()}) "
        "is used without asking the hub when HF_HUB_OFFLINE=1.")
