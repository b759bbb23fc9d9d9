"""OCR engines compared for speed and quality, to choose the offline default.

Images, all with known text:
- rendered: the demo's signs, posters, jerseys, logos and captioned photos
  (assets/demo/*.jsonl recipes, drawn by `render_image` and saved at
  the demo's 288x192), plus bench_extractors.py's 8 large signs (DejaVu Bold);
  the ground truth is each recipe's lines;
- photos: scikit-image's `page` (a photographed book page, transcribed below)
  for recall, and 12 photos without text, where every word read is a false
  positive.

Word recall and precision: words lowercased, punctuation stripped at their
edges, matched as multisets per image, summed over the set. Time per image:
wall-clock and CPU seconds (this process plus Tesseract's subprocesses), one
thread everywhere unless --threads says otherwise; each engine loads and warms
up on one image first.

    python bench/bench_ocr.py                      # all engines, Markdown table
    python bench/bench_ocr.py --only rapidocr tesseract --limit 10
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "project" / "scripts"))  # demo_corpus

import numpy  # noqa: E402
import spacy  # noqa: E402
import srsly  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

import spacy_ita  # noqa: E402,F401
import spacy_ita.context.component  # noqa: E402,F401
from bench_extractors import SIGNS, render_sign  # noqa: E402
from demo_corpus import SAVED_SIZE, render_image  # noqa: E402  (project/scripts)
from spacy_ita.context import make_doc  # noqa: E402
from spacy_ita.context.ocr import (_easyocr_reader, _offline_easyocr_dir, make_rapidocr,  # noqa: E402
                                   make_tesseract, polygon_fragments, reading_order_lines)

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPES = [REPO / "assets" / "demo" / f"{split}.jsonl"
                for split in ("dev", "test", "train")]
PAGE_TEXT = """Region-based segmentation
Let us first determine markers of the coins and the
background. These markers are pixels that we can label
unambiguously as either object or background. Here,
the markers are found at the two extreme parts of the
histogram of grey values:
>>> markers = np.zeros_like(coins)"""
TEXT_FREE_PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "coins", "clock",
                    "colorwheel", "rocket", "hubble_deep_field", "immunohistochemistry",
                    "logo", "retina"]
ENGINES = ("rapidocr", "rapidocr_640", "tesseract", "easyocr", "easyocr_tuned",
           "default_context")


def photo(name: str) -> Image.Image:
    pixels = getattr(data, name)()
    if pixels.dtype != numpy.uint8:
        pixels = (pixels * 255).astype(numpy.uint8)
    return Image.fromarray(pixels).convert("RGB")


def image_set(limit: int) -> List[Tuple[str, str, Image.Image, str]]:
    """(set, name, image, ground-truth text) for every benchmark image."""
    rendered = []
    for path in DEMO_RECIPES:
        for post in srsly.read_jsonl(path):
            image = render_image(post["image"]).resize(SAVED_SIZE, Image.Resampling.LANCZOS)
            rendered.append(("rendered", post["id"], image, "\n".join(post["image"]["lines"])))
    rendered = rendered[:limit]
    for index, (lines, background, ink) in enumerate(SIGNS):
        rendered.append(("rendered", f"sign_{index}", render_sign(lines, background, ink, index),
                         "\n".join(lines)))
    photos = [("photos", "page", photo("page"), PAGE_TEXT)]
    photos += [("photos", name, photo(name), "") for name in TEXT_FREE_PHOTOS]
    return rendered + photos


def words(text: str) -> Counter:
    cleaned = (word.strip(".,:;!?\"'()[]{}<>").lower() for word in text.split())
    return Counter(word for word in cleaned if word)


def engines(threads: int) -> Dict[str, Callable[[Image.Image], List[str]]]:
    """Each engine as image -> OCR lines, built lazily."""
    def rapid(max_side):
        extractor = make_rapidocr(max_side=max_side, threads=threads)
        return lambda image: extractor.extract([image])[0]

    def easy(**readtext):
        reader = _easyocr_reader(("en",), False, _offline_easyocr_dir(["en"]))

        def run(image):
            found = reader.readtext(numpy.asarray(image), **readtext)
            return reading_order_lines(polygon_fragments(found, 0.3))
        return run

    def tesseract():
        extractor = make_tesseract()
        return lambda image: extractor.extract([image])[0]

    def default_context():
        nlp = spacy.blank("en")
        nlp.add_pipe("ita_context")
        return lambda image: nlp(make_doc(nlp, "", image))._.visual_context.ocr_text

    return {
        "rapidocr": lambda: rapid(960),
        "rapidocr_640": lambda: rapid(640),
        "tesseract": tesseract,
        "easyocr": lambda: easy(),
        "easyocr_tuned": lambda: easy(canvas_size=960, batch_size=8),
        "default_context": default_context,
    }


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bench(build: Callable[[], Callable], images) -> Dict[str, Any]:
    start = time.perf_counter()
    ocr = build()
    ocr(images[0][2])  # load the models and warm up
    result: Dict[str, Any] = {"load": time.perf_counter() - start, "wall": [], "cpu": [],
                              "found": {}}
    for _, name, image, _ in images:
        wall, cpu = time.perf_counter(), cpu_seconds()
        lines = ocr(image)
        result["wall"].append(time.perf_counter() - wall)
        result["cpu"].append(cpu_seconds() - cpu)
        result["found"][name] = lines
    return result


def scores(images, found: Dict[str, List[str]], which: str) -> Dict[str, float]:
    truth_n = found_n = matched = 0
    for kind, name, _, truth in images:
        if kind != which:
            continue
        expected, got = words(truth), words(" ".join(found[name]))
        truth_n += sum(expected.values())
        found_n += sum(got.values())
        matched += sum((expected & got).values())
    return {"recall": matched / truth_n if truth_n else float("nan"),
            "precision": matched / found_n if found_n else float("nan"),
            "false_words": found_n - matched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--threads", type=int, default=1,
                        help="Threads for torch, onnxruntime and tesseract (default 1).")
    parser.add_argument("--limit", type=int, default=36,
                        help="At most this many demo images (default 36).")
    parser.add_argument("--json", type=Path, help="Also write the raw results here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_THREAD_LIMIT"] = str(args.threads)  # read by the tesseract binary
    warnings.simplefilter("ignore")
    images = image_set(args.limit)
    builders = engines(args.threads)
    results = {}
    for name in args.only:
        results[name] = bench(builders[name], images)
        print(f"{name}: done", file=sys.stderr)
    rendered = sum(kind == "rendered" for kind, *_ in images)
    print(f"{len(images)} images: {rendered} rendered with known text, 1 photographed page, "
          f"{len(TEXT_FREE_PHOTOS)} photos without text; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} thread(s); load average at the end "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| engine | load (s) | wall s/image (mean / median) | CPU s/image | rendered recall "
          "| rendered precision | page recall | page precision | words read on 12 text-free "
          "photos |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        signs = scores(images, result["found"], "rendered")
        page = scores(images[-len(TEXT_FREE_PHOTOS) - 1:-len(TEXT_FREE_PHOTOS)], result["found"],
                      "photos")
        free = scores(images[-len(TEXT_FREE_PHOTOS):], result["found"], "photos")
        print(f"| {name} | {result['load']:.2f} | {statistics.mean(result['wall']):.3f} / "
              f"{statistics.median(result['wall']):.3f} | {statistics.mean(result['cpu']):.3f} | "
              f"{signs['recall']:.1%} | {signs['precision']:.1%} | {page['recall']:.1%} | "
              f"{page['precision']:.1%} | {free['false_words']} |")
    if args.json:
        args.json.write_text(json.dumps({name: {key: value for key, value in result.items()}
                                         for name, result in results.items()}, indent=1))


if __name__ == "__main__":
    main()
