"""`python -m spacy_ita extract`: images (and posts) to visual contexts and
knowledge, stored in a `.spacy` DocBin."""
import time
import warnings
import zlib
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import spacy
import typer
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from tqdm import tqdm

from ..bulk.fetch import Fetcher
from ..bulk.inputs import jsonl_records, shown_path
from ..context import make_doc
from ..context import component  # noqa: F401  (registers the ita_context factory)
from ..context.config import OCREngine, context_config
from ..context.images import ImageError, describe_image
from ..corpus.readers import UNREADABLE
from ..knowledge import component as _knowledge  # noqa: F401  (and ita_knowledge's)
from ..files import replace_file
from ..visual_context import get_visual_context
from . import app
from .options import same_file, signals_end_the_run_cleanly

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
MAX_LISTED_FAILURES = 20
# A doc read from the input, where it is there ("posts.jsonl, line 3"), and
# why it cannot go through the pipeline (None: it can).
Input = Tuple[Doc, str, Optional[str]]


@dataclass
class ExtractSummary:
    """What an extraction run did, for the report at the end."""

    n_docs: int = 0
    n_with_context: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    knowledge_failures: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def build_extraction_nlp(lang: str = "en", ocr: OCREngine = OCREngine.rapidocr,
                         knowledge: Optional[Dict[str, Any]] = None,
                         **options: Any) -> Language:
    """A blank pipeline with `ita_context`, configured from CLI options (those
    of `context_config`), and `ita_knowledge` after it when `knowledge` (its
    config, see `knowledge_config`) is given; both share the cache."""
    nlp = spacy.blank(lang)
    config = context_config(ocr, **options)
    nlp.add_pipe("ita_context", config=config)
    if knowledge is not None:
        shared = {"cache_path": config["cache_path"], "on_error": config["on_error"],
                  "existing_knowledge": config["existing_context"]}
        nlp.add_pipe("ita_knowledge", config={**knowledge, **shared})
    return nlp


def knowledge_config(
    endpoint: Optional[str], model: Optional[str], key_env: Optional[str] = None,
    send_image: bool = False, labels: Optional[str] = None, examples: Optional[Path] = None,
    concurrency: int = 8, max_calls: Optional[int] = None,
) -> Optional[Dict[str, Any]]:
    """The `ita_knowledge` task and model for the --knowledge-* options (None
    without an endpoint); `labels` is comma-separated."""
    if endpoint is None:
        if model or key_env or send_image or labels or examples or max_calls is not None:
            raise ValueError("the --knowledge-* options and --send-image need "
                             "--knowledge-endpoint")
        return None
    if not model:
        raise ValueError("--knowledge-endpoint needs --knowledge-model")
    task: Dict[str, Any] = {"@misc": "spacy-ita.mentions_task.v1", "send_image": send_image}
    if labels is not None:
        task["labels"] = [label.strip() for label in labels.split(",") if label.strip()]
    if examples is not None:
        task["examples_path"] = str(examples)
    client = {"@misc": "spacy-ita.openai_compatible.v1", "base_url": endpoint, "model": model,
              "api_key_env": key_env, "max_concurrency": concurrency, "max_calls": max_calls}
    return {"task": task, "model": client}


class _ImageFinder:
    """Resolves image paths and ids against a folder, by file name or by stem."""

    def __init__(self, folder: Optional[Path]):
        self.folder = folder
        self.by_stem: Dict[str, Path] = {}
        if folder is not None:
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.by_stem.setdefault(path.stem, path)

    def find(self, name: str, base: Path) -> str:
        path = Path(name)
        if path.is_absolute():
            return str(path)
        root = self.folder if self.folder is not None else base
        if not (root / path).exists() and path.stem in self.by_stem and path.parent == Path("."):
            return str(self.by_stem[path.stem])
        return str(root / path)


def read_inputs(nlp: Language, input_path: Path, image_dir: Optional[Path],
                image_root: Optional[Path] = None) -> Tuple[int, Iterator[Input]]:
    """The number of docs and the docs to process (see `Input`), from a folder
    of images, a .spacy DocBin or a JSONL file of {"text", "image"[,
    "image_id"]} records. An image a record or an image id names must resolve
    inside `image_root` (default: the image folder, else the JSONL file's), as
    `apply` has it; one outside is an image error of its doc."""
    finder = _ImageFinder(image_dir)
    root = image_root or image_dir or input_path.parent
    confine = partial(_confined, Fetcher(image_root=str(root)))
    shown = shown_path(input_path)
    if input_path.is_dir():
        images = sorted(p for p in input_path.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return len(images), ((make_doc(nlp, "", str(p), image_id=p.stem), shown, None)
                             for p in images)
    if input_path.suffix == ".spacy":
        try:
            doc_bin = DocBin().from_disk(input_path)
        except UNREADABLE:
            raise ValueError(f"{shown} cannot be read: it is truncated or not a .spacy "
                             "file") from None

        def docs_from_bin() -> Iterator[Input]:
            docs = doc_bin.get_docs(nlp.vocab)
            for index in range(len(doc_bin)):
                where = f"{shown}, doc {index}"
                try:  # a context stored as a VisualContext is checked as it is read
                    doc = next(docs)
                except UNREADABLE as err:
                    raise ValueError(f"{where}: {err}") from None
                try:  # a dict becomes a VisualContext
                    doc._.visual_context = get_visual_context(doc)
                except (TypeError, ValueError) as err:
                    doc._.visual_context = None
                    yield doc, where, str(err)
                    continue
                if doc._.image is None and doc._.image_id is not None and image_dir:
                    doc._.image = finder.find(str(doc._.image_id), image_dir)
                    confine(doc)
                yield doc, where, None

        return len(doc_bin), docs_from_bin()
    if input_path.suffix in (".jsonl", ".json"):
        records = []
        for _, where, record, error, warning in jsonl_records(input_path):
            image_id = record.get("image_id")
            if error is None and not isinstance(record.get("text"), str):
                error = "expected an object with a 'text' string and an 'image' path"
            elif image_id is not None and (not isinstance(image_id, (str, int))
                                           or isinstance(image_id, bool)):
                error = f"'image_id' must be a string, got {image_id!r}"
            if error is not None:
                raise ValueError(f"{where}: {error}")
            if warning is not None:
                warnings.warn(f"{where}: {warning}")
            image = record.get("image")
            records.append((confine(make_doc(
                nlp, record["text"],
                None if image is None else finder.find(str(image), input_path.parent),
                image_id=None if image_id is None else str(image_id),
            )), where, None))
        return len(records), iter(records)
    raise ValueError(f"{input_path}: expected a folder of images, a .spacy file or a "
                     ".jsonl file")


def _confined(checker: Fetcher, doc: Doc) -> Doc:
    """The doc, its image path checked against the image root (symlinks followed)."""
    if isinstance(doc._.image, str):
        try:
            doc._.image = checker.check_local(doc._.image)
        except ImageError as err:
            doc._.image, doc._.image_error = None, str(err)
    return doc


def extract_contexts(nlp: Language, input_path: Path, output_path: Path,
                     image_dir: Optional[Path] = None, n_process: int = 1,
                     batch_size: int = 16, progress: bool = True,
                     image_root: Optional[Path] = None) -> ExtractSummary:
    """Run `nlp` over the input's docs and write them, with contexts, to
    output_path. Each component's setup (cache, LM key and endpoint) is
    checked first, so that a broken one fails before any image is read."""
    start = time.perf_counter()
    for _, component in nlp.pipeline:
        if hasattr(component, "preflight"):
            component.preflight()
    total, inputs = read_inputs(nlp, input_path, image_dir, image_root)
    summary = ExtractSummary()
    doc_bin = DocBin(store_user_data=True)
    processed = _pipe(nlp, inputs, batch_size, n_process)
    for doc, where in tqdm(processed, total=total, unit="doc", disable=not progress):
        summary.n_docs += 1
        context = doc._.visual_context
        summary.n_with_context += context is not None and not context.is_empty()
        if doc._.image_error is not None:
            summary.failures.append((_failed_doc(where, doc), doc._.image_error))
        if doc._.knowledge_error is not None:
            summary.knowledge_failures.append((_failed_doc(where, doc), doc._.knowledge_error))
        doc_bin.add(doc)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(output_path, doc_bin.to_bytes())
    summary.seconds = time.perf_counter() - start
    return summary


def _pipe(nlp: Language, inputs: Iterable[Input], batch_size: int,
          n_process: int) -> Iterator[Tuple[Doc, str]]:
    """(doc, where) in input order: the docs through `nlp`, except those that
    cannot go through it, which keep their place with the reason in
    Doc._.image_error, so that one bad doc costs only itself."""
    order: Deque[Tuple[str, Optional[Doc]]] = deque()  # every input; a doc if held back

    def usable() -> Iterator[Doc]:
        for doc, where, error in inputs:
            order.append((where, None if error is None else doc))
            if error is None:
                yield doc
            else:
                doc._.image_error = error

    for doc in nlp.pipe(usable(), batch_size=batch_size, n_process=n_process):
        while order[0][1] is not None:  # nlp has read past the held docs before `doc`
            where, held = order.popleft()
            yield held, where
        yield doc, order.popleft()[0]
    yield from ((held, where) for where, held in order)


def _failed_doc(where: str, doc: Doc) -> str:
    """A failed doc's name: where it is in the input, and its image in short
    (an image given as bytes is not printed)."""
    if doc._.image is not None:
        return f"{where} ({describe_image(doc._.image)})"
    if doc._.image_id is not None:
        return f"{where} (image_id {str(doc._.image_id)!r})"
    return where


def check_output(output: Path, read: Dict[str, Optional[Path]]) -> None:
    """Refuse, before any work, an OUTPUT that extract must not replace: a file
    the run reads (`read`, by what it is), a folder or a path below a file, or
    a file of data that is not a DocBin (a typo naming the posts or the
    captions). A DocBin is replaced."""
    if output.is_dir():
        raise _refusal(output, "is a folder (extract writes one .spacy file)")
    above = next((folder for folder in output.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise _refusal(output, f"is below {above}, which is a file, not a folder")
    for what, path in read.items():
        if path is not None and same_file(output, path):
            raise _refusal(output, f"is also {what}, which this run reads")
    if output.exists() and output.stat().st_size and not _is_docbin(output):
        raise _refusal(output, "is not a .spacy file")


def _refusal(output: Path, why: str) -> ValueError:
    return ValueError(f"OUTPUT {output} {why}, so extract leaves it as it is: choose "
                      "another OUTPUT.")


def _is_docbin(path: Path) -> bool:
    """Whether the file begins as DocBin.to_bytes writes: zlib data that opens
    a msgpack map whose first key is "version"."""
    with open(path, "rb") as file_:
        head = file_.read(1024)
    try:
        data = zlib.decompressobj().decompress(head, 9)
    except zlib.error:
        return False
    return len(data) == 9 and data[0] & 0xF0 == 0x80 and data[1:] == b"\xa7version"


def print_summary(summary: ExtractSummary, output_path: Path) -> None:
    typer.echo(f"Wrote {summary.n_docs} docs to {output_path} in {summary.seconds:.1f}s; "
               f"{summary.n_with_context} have a non-empty visual context")
    if not summary.failures:
        typer.echo("No image failed")
    _list_failures(f"{len(summary.failures)} image(s) failed:", summary.failures)
    _list_failures(f"{len(summary.knowledge_failures)} post(s) got no knowledge:",
                   summary.knowledge_failures)


def _list_failures(title: str, failures: List[Tuple[str, str]]) -> None:
    if not failures:
        return
    typer.echo(title)
    for name, error in failures[:MAX_LISTED_FAILURES]:
        typer.echo(f"  {name}: {error}")
    if len(failures) > MAX_LISTED_FAILURES:
        typer.echo(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more")


# The options of `extract` for knowledge from a language model, kept out of its
# signature so that it stays readable; the names match knowledge_config's.
KNOWLEDGE_OPTIONS = {
    "endpoint": typer.Option(
        None, "--knowledge-endpoint", metavar="URL",
        help="OpenAI-compatible API of a chat model (a vLLM or Ollama server's /v1) that "
        "adds knowledge: the post's entity mentions with types."),
    "model": typer.Option(
        None, "--knowledge-model", metavar="NAME", help="Model name at the endpoint."),
    "key_env": typer.Option(
        None, "--knowledge-key-env", metavar="VAR",
        help="Name of the environment variable that holds the API key (none: no key)."),
    "send_image": typer.Option(
        False, "--send-image", help="Send the image too (vision models); otherwise the "
        "model sees the post and the captions, tags and OCR found."),
    "labels": typer.Option(
        None, "--knowledge-labels", metavar="L1,L2",
        help="Entity types to ask for; default PER,LOC,ORG,OTHER."),
    "examples": typer.Option(
        None, "--knowledge-examples", exists=True, dir_okay=False, metavar="FILE",
        help="A .spacy training file whose posts with entities serve as few-shot examples."),
    "concurrency": typer.Option(
        8, "--knowledge-concurrency", min=1, metavar="N", help="Requests in flight at once."),
    "max_calls": typer.Option(
        None, "--knowledge-max-calls", min=0, metavar="N",
        help="Most requests this run makes; later posts get no knowledge."),
}


@app.command("extract")
def extract_cli(
    input_path: Path = typer.Argument(
        ..., exists=True, readable=True, metavar="INPUT",
        help="A folder of images, a .spacy file (docs with Doc._.image or "
        "Doc._.image_id), or a JSONL file of {\"text\": ..., \"image\": path} records.",
    ),
    output: Path = typer.Argument(
        ..., metavar="OUTPUT",
        help="Output .spacy file; an existing one is replaced, any other file refused."),
    image_dir: Optional[Path] = typer.Option(
        None, "--image-dir", "-i", exists=True, file_okay=False, metavar="DIR",
        help="Folder that relative image paths and image ids (by file name or stem) "
        "are found in; default: the JSONL file's folder.",
    ),
    image_root: Optional[Path] = typer.Option(
        None, "--image-root", file_okay=False, metavar="DIR",
        help="Images that JSONL records or image ids name must resolve inside DIR "
        "(symlinks followed); default: --image-dir, else the JSONL file's folder.",
    ),
    ocr: OCREngine = typer.Option(OCREngine.rapidocr, "--ocr", metavar="ENGINE",
                                  help="OCR engine: rapidocr, easyocr, tesseract or none."),
    tags: bool = typer.Option(True, "--tags/--no-tags",
                              help="Offline EfficientNet ImageNet object tags."),
    detector: Optional[str] = typer.Option(
        None, "--detector", metavar="MODEL",
        help="Hugging Face object-detection model for object tags instead of EfficientNet."),
    captioner: Optional[str] = typer.Option(
        None, "--captioner", metavar="MODEL", help="Hugging Face image-to-text model."),
    precomputed: Optional[Path] = typer.Option(
        None, "--precomputed", exists=True, dir_okay=False, metavar="FILE",
        help="Captions file ('<id>.jpg :<caption>' lines or JSONL) to look contexts up in."),
    cache: Optional[Path] = typer.Option(
        None, "--cache", metavar="FILE",
        help="SQLite cache of contexts, reused across runs (created if missing)."),
    existing: str = typer.Option(
        "merge", "--existing", metavar="MODE",
        help="keep, merge or replace the contexts the input docs already have."),
    lang: str = typer.Option("en", "--lang", "-l", metavar="LANG",
                             help="Language of the blank tokenizer."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, metavar="N",
                                   help="Images decoded and run together."),
    n_process: int = typer.Option(1, "--n-process", "-n", min=1, metavar="N",
                                  help="Worker processes; each loads its own models."),
    gpu: bool = typer.Option(False, "--gpu", help="Run the models on a CUDA GPU."),
    knowledge_endpoint: Optional[str] = KNOWLEDGE_OPTIONS["endpoint"],
    knowledge_model: Optional[str] = KNOWLEDGE_OPTIONS["model"],
    knowledge_key_env: Optional[str] = KNOWLEDGE_OPTIONS["key_env"],
    send_image: bool = KNOWLEDGE_OPTIONS["send_image"],
    knowledge_labels: Optional[str] = KNOWLEDGE_OPTIONS["labels"],
    knowledge_examples: Optional[Path] = KNOWLEDGE_OPTIONS["examples"],
    knowledge_concurrency: int = KNOWLEDGE_OPTIONS["concurrency"],
    knowledge_max_calls: Optional[int] = KNOWLEDGE_OPTIONS["max_calls"],
) -> None:
    """Turn images into visual contexts (object tags, captions, OCR) and, with
    --knowledge-endpoint, posts into knowledge, and store them in
    Doc._.visual_context in a .spacy file (user data kept). Failed images give
    an empty context and their error in Doc._.image_error, failed knowledge its
    error in Doc._.knowledge_error; both are listed at the end."""
    try:
        check_output(output, {"INPUT": input_path, "the --cache file": cache,
                              "the --precomputed file": precomputed,
                              "the --knowledge-examples file": knowledge_examples})
        knowledge = knowledge_config(knowledge_endpoint, knowledge_model, knowledge_key_env,
                                     send_image, knowledge_labels, knowledge_examples,
                                     knowledge_concurrency, knowledge_max_calls)
        nlp = build_extraction_nlp(lang, ocr, knowledge, tags=tags, detector=detector,
                                   captioner=captioner, precomputed=precomputed, cache=cache,
                                   gpu=gpu, batch_size=batch_size, existing_context=existing)
        with signals_end_the_run_cleanly():
            summary = extract_contexts(nlp, input_path, output, image_dir, n_process,
                                       batch_size, image_root=image_root)
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1) from None
    print_summary(summary, output)

