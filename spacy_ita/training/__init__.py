"""Training `ita_ner` pipelines: `loop` (the resumable training loop) and `checkpoints`
(the store of model-last, model-best and the resume point). Imported only when used.
"""
