"""Bulk annotation: `apply` a trained pipeline to files of posts, in-process or on Ray.

Modules: `inputs` (readers), `fetch` (image URLs), `annotate` (what a worker
does to a batch), `outputs` (resumable writers), `local` and `ray_engine`
(the engines), `run` (the `apply` function). The settings of `apply` are
dataclasses exported here. Ray and pyarrow are imported
only when used.
"""
from .annotate import PipelineSettings
from .fetch import Fetcher
from .inputs import Columns
from .local import LocalSettings
from .ray_engine import RaySettings
from .run import ApplySummary, OutputSettings, apply

__all__ = ["ApplySummary", "Columns", "Fetcher", "LocalSettings", "OutputSettings",
           "PipelineSettings", "RaySettings", "apply"]
