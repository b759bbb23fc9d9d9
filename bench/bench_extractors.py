"""Seconds per image of the ita_context extractors on CPU, over a fixed image set.

The set is 14 scikit-image sample photos plus 8 signs rendered with Pillow,
written as PNG/JPEG files so that reading and decoding are part of the cost.
Each extractor loads its model once (timed apart), warms up on one image,
then runs image by image. "cache" runs the whole default ita_context component
image by image twice: cold (filling its SQLite cache), then as cache hits.

    python bench/bench_extractors.py              # everything, Markdown table
    python bench/bench_extractors.py --only efficientnet cache
"""
import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy  # noqa: E402
import spacy  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from skimage import data  # noqa: E402

import spacy_ita  # noqa: E402,F401
import spacy_ita.context.component  # noqa: E402,F401
from spacy_ita.context import make_doc  # noqa: E402
from spacy_ita.context.images import load_image  # noqa: E402
from spacy_ita.context.ocr import make_easyocr, make_tesseract  # noqa: E402
from spacy_ita.context.tags import make_efficientnet_tagger  # noqa: E402

PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "coins", "clock", "colorwheel",
          "rocket", "hubble_deep_field", "immunohistochemistry", "logo", "page", "text",
          "retina"]
SIGNS = [
    (["STAPLES CENTER"], "white", "black"),
    (["Los Angeles Lakers", "vs Boston Celtics"], "yellow", "purple"),
    (["OPEN 24 HOURS"], "black", "red"),
    (["Madison Square Garden"], "navy", "white"),
    (["NO PARKING", "Mon-Fri 8am-6pm"], "white", "red"),
    (["Welcome to Berlin"], "darkgreen", "white"),
    (["SALE 50% OFF"], "red", "white"),
    (["Golden State Warriors", "Chase Center"], "blue", "gold"),
]
STEPS = ("decode", "easyocr", "tesseract", "efficientnet", "efficientnet_batch16", "cache")
DEJAVU_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def sign_font(size: int):
    if DEJAVU_BOLD.exists():
        return ImageFont.truetype(str(DEJAVU_BOLD), size)
    return ImageFont.load_default(size=size)


def render_sign(lines: List[str], background: str, ink: str, index: int) -> Image.Image:
    image = Image.new("RGB", (1000 + 40 * index, 400), background)
    draw = ImageDraw.Draw(image)
    size = 56 + 4 * index
    for i, line in enumerate(lines):
        draw.text((50, 60 + i * int(size * 1.7)), line, font=sign_font(size), fill=ink)
    return image


def write_image_set(folder: Path) -> List[Path]:
    """The fixed benchmark images, as files: photos as JPEG (PNG when not RGB), signs as PNG."""
    paths = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        image = Image.fromarray(pixels if pixels.dtype == numpy.uint8 else
                                (pixels * 255).astype(numpy.uint8))
        path = folder / (f"{name}.jpg" if image.mode == "RGB" else f"{name}.png")
        image.save(path)
        paths.append(path)
    for index, (lines, background, ink) in enumerate(SIGNS):
        path = folder / f"sign_{index}.png"
        render_sign(lines, background, ink, index).save(path)
        paths.append(path)
    return paths


def time_per_image(run: Callable[[Path], object], paths: List[Path]) -> List[float]:
    seconds = []
    for path in paths:
        start = time.perf_counter()
        run(path)
        seconds.append(time.perf_counter() - start)
    return seconds


def bench_extractor(extractor, paths: List[Path]) -> Dict[str, object]:
    start = time.perf_counter()
    extractor.load()
    load_seconds = time.perf_counter() - start
    extractor.extract([load_image(paths[0])])  # warm-up
    seconds = time_per_image(lambda p: extractor.extract([load_image(p)]), paths)
    return {"load": load_seconds, "seconds": seconds}


def bench_batched_tags(paths: List[Path]) -> Dict[str, object]:
    tagger = make_efficientnet_tagger()
    tagger.load()
    start = time.perf_counter()
    for i in range(0, len(paths), 16):
        tagger.extract([load_image(p) for p in paths[i:i + 16]])
    per_image = (time.perf_counter() - start) / len(paths)
    return {"load": None, "seconds": [per_image] * len(paths), "batched": True}


def bench_component(paths: List[Path], folder: Path) -> Dict[str, Dict[str, object]]:
    """The default component image by image: first filling its cache, then hitting it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={"cache_path": str(folder / "cache.sqlite")})
    warm_up = render_sign(["warm up"], "white", "black", 0)  # not in the set: no cache hit later
    nlp(make_doc(nlp, "", warm_up))
    run = lambda p: nlp(make_doc(nlp, "", str(p)))  # noqa: E731
    cold = time_per_image(run, paths)
    return {"ita_context default, cold": {"load": None, "seconds": cold},
            "cache hit": {"load": None, "seconds": time_per_image(run, paths)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS),
                        help="Measure only these (default: all).")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and tesseract (default: their choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_THREAD_LIMIT"] = str(args.threads)  # read by the tesseract binary
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="bench_ita_"))
    try:
        paths = write_image_set(folder)
        results: Dict[str, Dict[str, object]] = {}
        for step in args.only:
            if step == "decode":
                results[step] = {"load": None, "seconds": time_per_image(load_image, paths)}
            elif step == "easyocr":
                results[step] = bench_extractor(make_easyocr(), paths)
            elif step == "tesseract":
                if shutil.which("tesseract") is None:
                    print("tesseract: skipped, binary not found", file=sys.stderr)
                    continue
                results[step] = bench_extractor(make_tesseract(), paths)
            elif step == "efficientnet":
                results[step] = bench_extractor(make_efficientnet_tagger(), paths)
            elif step == "efficientnet_batch16":
                results[step] = bench_batched_tags(paths)
            elif step == "cache":
                results.update(bench_component(paths, folder))
            print(f"{step}: done", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{len(paths)} images ({len(PHOTOS)} skimage photos, {len(SIGNS)} rendered signs); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| step | model load (s) | s/image mean | median | photos mean | signs mean "
          "| slowest image (s) |")
    print("|---|---|---|---|---|---|---|")
    for step, result in results.items():
        seconds = result["seconds"]
        load = "" if result["load"] is None else f"{result['load']:.2f}"
        slowest = max(range(len(seconds)), key=seconds.__getitem__)
        slowest_text = ("n/a (batched)" if result.get("batched") else
                        f"{paths[slowest].stem} ({seconds[slowest]:.3f})")
        print(f"| {step} | {load} | {statistics.mean(seconds):.4f} | "
              f"{statistics.median(seconds):.4f} | "
              f"{statistics.mean(seconds[:len(PHOTOS)]):.4f} | "
              f"{statistics.mean(seconds[len(PHOTOS):]):.4f} | "
              f"{slowest_text} |")


if __name__ == "__main__":
    main()
