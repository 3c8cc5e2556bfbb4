"""Fail fast and clearly without a network, instead of retrying for minutes.

`datasets` retries an unreachable Hub for about 23 s (minutes on a network that hangs) and
torchvision's weight download has no timeout, so both are preceded by a bounded reachability
probe. RESNET_EXP_OFFLINE=1 forces offline behaviour (the tests use it; so can users on a
metered link). The Hub clients are put offline by their public switches, the environment
variables HF_HUB_OFFLINE and HF_DATASETS_OFFLINE, which they read once, when first imported: so
the decision is made before that (see hub_offline_if_unreachable).

    RESNET_EXP_OFFLINE=1 resnet-exp train --data lucabaggi/animal-wildlife   # fails in < 1 s
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlparse

from resnet_exp.errors import OfflineError

PROBE_TIMEOUT_S = 5.0  # a TCP connect answers in well under a second when the network works
OFFLINE_ENV = "RESNET_EXP_OFFLINE"
HUB_URL = "https://huggingface.co"
# The Hub clients' own offline switches: huggingface_hub reads the first, `datasets` both (its own
# first), each once, when it is imported.
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE_TEXTS = ("1", "ON", "YES", "TRUE")  # what both libraries read as true


def forced_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the host of `url` opens within `timeout` seconds."""
    if forced_offline():
        return False
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return connect_error(parsed.hostname or "", port, timeout) is None


def connect_error(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to host:port did not open within `timeout` seconds ('connection
    refused', 'no answer', ...), or None when it did."""
    result: list[str | None] = []

    def probe() -> None:  # DNS lookups ignore socket timeouts, hence the thread
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except TimeoutError:
            result.append("no answer")
        except OSError as err:
            result.append((err.strerror or type(err).__name__).lower())

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else "no answer"


def hub_offline_if_unreachable() -> None:
    """Put this process's Hub clients offline when RESNET_EXP_OFFLINE says so or the Hub does not
    answer a TCP connect within PROBE_TIMEOUT_S: they then answer at once from the local cache
    instead of retrying for ~23 s. It sets HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1, which
    `datasets` and `huggingface_hub` read when first imported, so it must run before that:
    `resnet-exp train` and `sweep` call it (through check_hub_dataset) before anything imports
    them, and a process that starts elsewhere (a Ray trial, a script) through load_splits.

    Once either library is imported its mode is fixed for the process, and nothing is probed: a
    network that drops during an in-process sweep costs the next child `datasets`' own retries
    (~23 s) before it falls back to its cache. Child processes inherit the variables."""
    if "datasets" in sys.modules or "huggingface_hub" in sys.modules:
        return
    if any(os.environ.get(name, "").upper() in TRUE_TEXTS for name in HUB_OFFLINE_VARIABLES):
        return  # offline already: no probe
    if forced_offline() or not reachable(HUB_URL):
        os.environ.update(dict.fromkeys(HUB_OFFLINE_VARIABLES, "1"))


def hub_unavailable(hub_id: str) -> OfflineError:
    return OfflineError(
        f"cannot load dataset {hub_id!r}: the network (Hugging Face Hub, {HUB_URL}) "
        f"is unreachable and the dataset is not in the local Hugging Face cache.\n"
        f"{offline_options()}"
    )


def check_hub_dataset(hub_id: str) -> None:
    """A Hub dataset that cannot be had (Hub unreachable, not cached) fails here, within seconds,
    before a command imports Lightning and torchvision (about 15 s on 2 cores). The dataset's
    builder is what `datasets.load_dataset` resolves first, from the cache when offline;
    nothing is downloaded or prepared."""
    hub_offline_if_unreachable()  # before `datasets` is imported, which reads the decision
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        return  # online: loading reports anything else, with the Hub's own words
    try:
        datasets.load_dataset_builder(hub_id)
    except ConnectionError:
        raise hub_unavailable(hub_id) from None
    except (FileNotFoundError, ValueError):
        return  # not an offline problem: loading the data names it (data._load_hub)


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
        lines.append(
            f"  or copy the ImageNet weights file to {torch_cache_file} (set TORCH_HOME "
            "to move torchvision's cache)"
        )
    return "\n".join(lines)
