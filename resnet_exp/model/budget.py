"""A request's budget: how many images, how many bytes and pixels, and how many seconds one
call of the registered model may spend, so that no request ties a serving worker up for longer
than it is answered.

The registered model records these limits as its `model_config` (defaults below); a loader may
change them (`mlflow.pyfunc.load_model(uri, model_config={...})`, or MLflow's
`MLFLOW_PYFUNC_INFERENCE_CONFIG` variable for `mlflow models serve`), and a request may ask for a
shorter time budget (`"params": {"request_seconds": 5}`), never a longer one.

    python -c "from resnet_exp.model.budget import RequestBudget; \
print(RequestBudget.from_config({'request_seconds': 10}, server_timeout=60))"
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from resnet_exp.data.images import MAX_REQUEST_PIXELS, ImageInputError

# 256 images a request: 8 forward passes of 32. Each image costs a header read, a decode and its
# share of a forward pass; 64 demo images take 0.13 s on 2 cores, 256 photos at 224 px about 10 s.
# Bounding the count first refuses a flood of tiny images (100,000 PNGs of 1 x 1 pixel, 9.3 MB of
# JSON) before any is looked at.
MAX_REQUEST_IMAGES = 256
# 64 MiB of image files (85 MiB as base64 text): a dozen camera JPEGs, or 256 images of 256 kB.
MAX_REQUEST_BYTES = 64 * 2**20
# Seconds one request may spend decoding and predicting before it is answered with an error and
# its work stops. Serving, it is also at most half the scoring server's own timeout
# (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s by default): the other half is left to MLflow's
# parsing of the request and writing of the answer, so the model answers before the server's 504.
REQUEST_SECONDS = 30.0


class RequestTimeout(Exception):
    """A request ran past its time budget; its work has stopped. The message says where."""


@dataclass(frozen=True)
class RequestBudget:
    max_request_images: int = MAX_REQUEST_IMAGES
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_request_pixels: int = MAX_REQUEST_PIXELS
    request_seconds: float = REQUEST_SECONDS

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            whole = field.name != "request_seconds"
            kinds = (int,) if whole else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
                raise ValueError(
                    f"model_config {field.name}={value!r}: expected a positive "
                    f"{'whole number' if whole else 'number of seconds'}"
                )

    def to_config(self) -> dict[str, float]:
        """The model_config a registered model is logged with."""
        return asdict(self)

    @classmethod
    def from_config(
        cls, config: Mapping | None, server_timeout: float | None = None
    ) -> RequestBudget:
        """The budget of a loaded model: its model_config, capped at half the scoring server's
        timeout when there is one. ValueError naming a bad value."""
        names = {field.name for field in fields(cls)}
        budget = cls(**{k: v for k, v in (config or {}).items() if k in names})
        if server_timeout:
            seconds = min(budget.request_seconds, server_timeout / 2)
            budget = replace(budget, request_seconds=seconds)
        return budget

    def within(self, params: Mapping | None) -> RequestBudget:
        """This budget, with a shorter time if the request's params ask for one."""
        asked = (params or {}).get("request_seconds")
        if asked is None:
            return self
        return replace(self, request_seconds=min(self.request_seconds, float(asked)))

    def meter(self, count: int) -> RequestMeter:
        """Start spending on a request of `count` images (refused now if they are too many)."""
        return RequestMeter(self, count)


class RequestMeter:
    """One request's spending against its budget, checked image by image."""

    def __init__(self, budget: RequestBudget, count: int):
        if count > budget.max_request_images:
            raise ImageInputError(
                f"the request holds {count:,} images, over this model's limit of "
                f"{budget.max_request_images:,} images per request (max_request_images): "
                "send fewer images per request"
            )
        self.budget, self.count, self.bytes = budget, count, 0
        self.deadline = time.monotonic() + budget.request_seconds

    def where(self, index: int) -> str:
        """'image 3 of 10' for the image at 0-based `index`."""
        return f"image {index + 1:,} of {self.count:,}"

    def add_bytes(self, index: int, size: int) -> None:
        self.bytes += size
        if self.bytes > self.budget.max_request_bytes:
            raise ImageInputError(
                f"{self.where(index)}: the request's image files reach {self.bytes:,} bytes, "
                f"over this model's limit of {self.budget.max_request_bytes:,} bytes per "
                "request (max_request_bytes): send fewer or smaller images per request"
            )

    def check_time(self, index: int) -> None:
        """RequestTimeout once the budget is spent: the caller's work stops there."""
        if time.monotonic() > self.deadline:
            raise RequestTimeout(
                f"{self.where(index)}: the request used up its time budget of "
                f"{self.budget.request_seconds:g} s (request_seconds) and was stopped: send "
                "fewer or smaller images per request"
            )
