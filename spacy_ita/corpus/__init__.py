"""Multimodal NER corpora: `mner` (the Twitter-2015/2017 format and JSONL posts)
and `readers` (`spacy-ita.MultimodalCorpus.v1`, the training corpus reader).
"""
