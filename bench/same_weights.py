"""Whether two trained pipelines' ita_ner weights are bit-identical: the check
that a refactor changed no result (docs/benchmarks.md, "The house step").

    python bench/same_weights.py BEFORE/model-last AFTER/model-last

Exit 0 when every tensor of the torch module's state dict is equal to the
bit, in the same order and shape; else 1, naming the first that differ.
"""
import sys

import spacy
import torch

import spacy_ita  # noqa: F401  (the Doc extensions the pipelines need)


def tensors(path: str):
    """The (name, tensor) pairs of the pipeline's ita_ner torch module."""
    module = spacy.load(path).get_pipe("ita_ner").model.module
    return [(name, tensor.detach().cpu()) for name, tensor in module.state_dict().items()]


def main(before: str, after: str) -> int:
    a, b = tensors(before), tensors(after)
    differ = [name_a for (name_a, x), (name_b, y) in zip(a, b)
              if name_a != name_b or x.shape != y.shape or not torch.equal(x, y)]
    if len(a) != len(b):
        differ.append(f"{len(a)} tensors against {len(b)}")
    print(f"{len(a)} tensors, {len(differ)} differ" + (f": {differ[:5]}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
