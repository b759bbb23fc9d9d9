"""`spacy_ita serve`: an HTTP API and a page to try a model (the `serve` extra).

`create_app(nlp, ServeSettings(...))` in `spacy_ita.serve.app` builds the
FastAPI app; `python -m spacy_ita serve MODEL` runs it with uvicorn. This
package imports FastAPI only in its modules, not here.
"""
