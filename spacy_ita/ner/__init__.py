"""The `ita_ner` tagger stack: transformer + CRF over the text and the text + image-context views.

Modules, from the pipe down: `component` (the `ita_ner` pipe), `model` (the thinc
model, `spacy-ita.ItaTagger.v2`: `ItaTaggerModel`, the pipe's only way into torch),
`torch_module` (the PyTorch module and its loading), `inputs`
(sentence + context to encoder batches), `token_features`, `crf`, `loss`
(`spacy-ita.ita_loss.v1`), `tag_scheme` (BIO/BIOES tags and spans), `encoders`,
`precision` and `views`. This package stays light (no torch or transformers
import), so that `import spacy_ita` and the CLI stay fast.
"""
