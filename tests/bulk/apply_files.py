"""Running `apply` without a context component, and writing and reading its files."""
import json
from pathlib import Path

from spacy_ita.bulk import PipelineSettings, apply


def run(model: str, source, output: Path, **options):
    return apply(model, source, output, pipeline=PipelineSettings(add_context=False),
                 progress=False, **options)


def write_jsonl(path: Path, records) -> Path:
    """One JSON object a line; non-ASCII as \\u escapes, as json.dumps writes by default."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def read_rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]
