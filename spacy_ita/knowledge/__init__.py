"""Knowledge about a post's entities from a language model: the `ita_knowledge`
component (`component`), what it asks and how it reads the answer (`task`),
whom it asks (`client`), knowledge as entity mentions, parsed, rendered and
aligned (`mentions`) and rewritten as another LM might write it (`shift`, to
train for that and to measure it); `legacy` says how to move a config of the
old `knowledge` slot of `ita_context`.

This package stays light (no spaCy or torch import); its modules import what they need.
"""
