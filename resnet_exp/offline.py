"""Fail fast and clearly without a network, instead of retrying for minutes.

`datasets` retries an unreachable Hub for about 23 s (minutes on a network that hangs) and
torchvision's weight download has no timeout, so both are preceded by a bounded reachability
probe. RESNET_EXP_OFFLINE=1 forces offline behaviour (the tests use it; so can users on a
metered link).

    RESNET_EXP_OFFLINE=1 resnet-exp train --data lucabaggi/animal-wildlife   # fails in < 1 s
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


PROBE_TIMEOUT_S = 5.0  # a TCP connect answers in well under a second when the network works
OFFLINE_ENV = "RESNET_EXP_OFFLINE"


def forced_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the host of `url` opens within `timeout` seconds."""
    if forced_offline():
        return False
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:  # DNS lookups ignore socket timeouts, hence the thread
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def offline_options(torch_cache_file: str | None = None) -> str:
    """The ways to train without a network, for error messages."""
    lines = [
        "Offline options:",
        "  data=demo                 the bundled demo dataset, generated locally",
        "  data=/path/to/folder      a local image folder (one subfolder per class)",
        "  weights=none              random initialisation instead of ImageNet weights",
        "  weights=/path/to/file.pt  a state_dict file you already have",
    ]
    if torch_cache_file:
        lines.append(f"  or copy the ImageNet weights file to {torch_cache_file} (set TORCH_HOME "
                     "to move torchvision's cache)")
    return "\n".join(lines)
