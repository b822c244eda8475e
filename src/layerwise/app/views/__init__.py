"""One module per page of the explorer, each with ``render(...)``: widgets and drawing only,
over the plain modules of :mod:`layerwise.app`. (Not named ``pages``: Streamlit would turn a
``pages/`` folder beside the entry script into pages of its own.)"""
