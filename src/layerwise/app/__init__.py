"""The explorer: an interactive Streamlit app over whatever the pipeline has produced.

``make explore`` starts it (``streamlit run src/layerwise/app/main.py``). It reads models,
SAEs, activation stores and results through :mod:`layerwise.paths` and never writes into
pipeline outputs. The computations live in plain modules (``catalog``, ``loaders``,
``encode``, ``cards``, ``search``, ``results``) that the tests and ``bench/explorer.py`` use
without Streamlit; ``main`` and ``views/`` only draw.
"""
