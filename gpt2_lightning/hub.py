"""Whether the Hugging Face Hub can be reached, decided in seconds instead of after a minute of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to skip network attempts"


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (no name resolution, no connection within 5 s), or None.

    In offline mode (HF_HUB_OFFLINE=1) the libraries fail at once by themselves, or serve their cache; behind an
    HTTP(S) proxy a direct connection says nothing: both are left to the download itself.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return None
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        return f"{host} is unreachable ({err.strerror or err}); {OFFLINE_HINT}"
    return None
