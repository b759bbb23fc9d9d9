"""Bulk annotation: `apply` a trained pipeline to files of posts, in-process or on Ray.

Modules: `inputs` (readers), `fetch` (image URLs), `annotate` (what a worker
does to a batch), `outputs` (resumable writers), `local` and `ray_engine`
(the engines), `run` (the `apply` function). Ray and pyarrow are imported
only when used.
"""
from .run import ApplySummary, apply

__all__ = ["ApplySummary", "apply"]
