"""Knowledge about a post's entities in text form: `mentions` parses, renders and aligns it.

This package stays light (no spaCy or torch import).
"""
