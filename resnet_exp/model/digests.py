"""Digests of a logged model's files, so that a model altered after it was logged is refused
rather than run: a model's code (its pyfunc_model.py and the resnet_exp copy under code/) runs
in every process that loads it.

`digests.json` in the model's folder maps each file to its sha256; the registry keeps the sha256
of digests.json itself (a tag on the logged model and on each version). A digest kept beside the
files catches accidental and naive edits only: whoever can rewrite the files can rewrite
digests.json. Checked against the registry's tag (`resnet-exp predict` does), it holds as long as
the registry is trusted and the artifact store is not. Standard library only.

    python -c "from resnet_exp.model.digests import verify_model_files; verify_model_files('model')"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from resnet_exp.schema import DIGESTS_FILE

# Written by Python or MLflow into a model's folder when it is loaded: never part of the digests
# (a compiled file is only used while its source's size and time match, and sources are covered).
SKIPPED_PARTS = ("__pycache__",)
SKIPPED_NAMES = (DIGESTS_FILE, "registered_model_meta")
CHUNK = 2**20  # bytes read at a time: a 45 MB weights file is hashed in 0.1 s, never held whole


class ModelIntegrityError(ValueError):
    """A model's files differ from the digests recorded when it was logged."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(root: Path) -> list[str]:
    """Every file of the model folder (relative POSIX paths, sorted) that its digests cover."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file()
        and path.name not in SKIPPED_NAMES
        and not any(part in SKIPPED_PARTS for part in path.relative_to(root).parts)
    )


def write_digests(root: str | Path) -> str:
    """Write digests.json for the model folder `root`; returns digests.json's own sha256."""
    root = Path(root)
    digests = {name: file_sha256(root / name) for name in model_files(root)}
    path = root / DIGESTS_FILE
    path.write_text(json.dumps(digests, indent=1, sort_keys=True))
    return file_sha256(path)


def verify_model_files(root: str | Path, expected: str | None = None) -> bool:
    """Check the model folder `root` against its digests.json, and digests.json against the
    sha256 the registry recorded (`expected`), if given. Raises ModelIntegrityError naming the
    first file that differs, is missing or was added (Python files only: other files a loader
    adds are harmless). Returns False for a model logged before digests existed (no
    digests.json and nothing expected): nothing to check."""
    root = Path(root)
    path = root / DIGESTS_FILE
    if not path.is_file():
        if expected:
            raise ModelIntegrityError(
                f"model at {root} has no {DIGESTS_FILE}, but the registry recorded one when it "
                "was logged: its files were altered; refusing to load it"
            )
        return False
    if expected and file_sha256(path) != expected:
        _refuse(root, DIGESTS_FILE, "does not match the sha256 the registry recorded for it")
    recorded = json.loads(path.read_text())
    for name, digest in recorded.items():
        if not (root / name).is_file():
            _refuse(root, name, "is missing")
        if file_sha256(root / name) != digest:
            _refuse(root, name, "does not match the sha256 recorded when the model was logged")
    for name in model_files(root):
        if name not in recorded and name.endswith(".py"):
            _refuse(root, name, "was added after the model was logged")
    return True


def _refuse(root: Path, name: str, why: str) -> None:
    raise ModelIntegrityError(
        f"model file {name} {why}: the model was altered; refusing to load it"
    )
