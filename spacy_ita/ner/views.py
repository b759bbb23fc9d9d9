"""The inference views of `ita_ner`, in a module light enough for the CLI to import.

"auto": the cross-modal view for a doc with visual context, the text-only view
for one without; "cross" and "text" force one view for every doc.
"""
VIEWS = ("auto", "cross", "text")
