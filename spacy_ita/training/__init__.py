"""Training `ita_ner` pipelines: `loop` (the resumable training loop), `settings`
(the config's [training] block as the loop reads it) and `checkpoints` (the
store of model-last, model-best and the resume point). Imported only when used.
"""
