"""One worker of a batch: a Pipeline turning lines into finished PNG files (in-process, or inside a Ray actor)."""
from __future__ import annotations

import logging
from typing import Any

from sdcompose.batch.jobs import Job
from sdcompose.errors import SdcomposeError, describe
from sdcompose.metadata import png_bytes
from sdcompose.plugins.api import PluginError

log = logging.getLogger("sdcompose")
Outcome = tuple[list[bytes] | None, str | None]  # the PNG files of a line, or why it failed


class Worker:
    """Owns one ``sdcompose.Pipeline`` (built on first use); each image's metadata names the worker that made it."""

    def __init__(self, name: str | None = None, models: Any = None, device: str | None = None,
                 dtype: str | None = None) -> None:
        self.name = name or _actor_name()
        self._options = dict(models=models, device=device, dtype=dtype)
        self._pipe = None

    def render(self, job: Job) -> Outcome:
        try:
            if self._pipe is None:
                from sdcompose.pipelines.pipeline import Pipeline
                self._pipe = Pipeline(**self._options)
            result = self._pipe.run(job.request)
            where = {"id": job.id, "line": job.line, "worker": self.name}
            return [png_bytes(image, {**meta, "batch": where}, result.inputs)
                    for image, meta in zip(result.images, result.per_image)], None
        except (SdcomposeError, PluginError) as exc:
            return None, str(exc)
        except Exception as exc:  # a fault in one line is that line's failure; the batch goes on
            log.debug("batch line %s failed", job.line, exc_info=True)
            return None, describe(exc)

    def describe(self) -> str:
        return self.name


def _actor_name() -> str:
    """``ray-<actor id>`` inside a Ray actor (the id Ray's dashboard and ``ray list actors`` show)."""
    import ray
    return "ray-" + ray.get_runtime_context().get_actor_id()[:16]
