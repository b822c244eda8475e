"""The explorer's entry point (``make explore``)::

    streamlit run src/layerwise/app/main.py -- --root . --params params.yaml

``--root`` (default: ``LAYERWISE_ROOT``, else the working directory) is the repo whose outputs
are shown; ``--params`` (default: ``LAYERWISE_PARAMS``, else ``<root>/params.yaml``) names each
model's pre-trained source. Every page is a module of :mod:`layerwise.app.views`; a page that
needs an output that is not there says which stage makes it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import streamlit as st

from layerwise.app import widgets
from layerwise.app.catalog import REPRODUCE_HINT, ExplorerError
from layerwise.app.loaders import Workspace
from layerwise.app.views import (
    crosscoders,
    feature_cards,
    overview,
    run_results,
    sentence,
    side_by_side,
)

logger = logging.getLogger(__name__)

PAGES = ("Overview", "Sentence", "PT vs FT", "Feature cards", "Crosscoders", "Results")
# Also the URL's names: ``?page=Sentence``, ``?page=PT+vs+FT``.


def workspace_args(argv: list[str]) -> tuple[str, str | None]:
    """(root, params) from the arguments after ``--``, else the environment."""
    parser = argparse.ArgumentParser(prog="layerwise explorer")
    parser.add_argument("--root", default=os.environ.get("LAYERWISE_ROOT", "."))
    parser.add_argument("--params", default=os.environ.get("LAYERWISE_PARAMS"))
    args, _ = parser.parse_known_args(argv)
    return args.root, args.params


@st.cache_resource(show_spinner=False)
def workspace(root: str, params: str | None) -> Workspace:
    """One workspace per (root, params) for the whole server: models and SAEs load once."""
    return Workspace(root, params)


def main() -> None:
    st.set_page_config(page_title="layerwise explorer", layout="wide")
    ws = workspace(*workspace_args(sys.argv[1:]))
    catalog = ws.catalog()
    st.sidebar.title("layerwise explorer")
    page = st.sidebar.radio("Page", PAGES, key="page", bind="query-params")
    if catalog.empty:
        st.info(REPRODUCE_HINT.format(root=ws.root))
        return
    if page == "Overview":
        overview.render(catalog)
        return
    if not catalog.runs and page != "Results":
        st.info("No (model, task, seed) run has outputs yet: run `make reproduce`.")
        return
    key = widgets.run_picker(catalog) if catalog.runs else None
    loading = "Loading (the first time a model, SAE or crosscoder is used, it is read from disk)…"
    try:
        with st.spinner(loading):
            if page == "Sentence":
                sentence.render(ws, key)
            elif page == "PT vs FT":
                side_by_side.render(ws, key)
            elif page == "Feature cards":
                feature_cards.render(ws, key)
            elif page == crosscoders.PAGE:
                crosscoders.render(ws, key)
            else:
                run_results.render(ws, key, catalog)
    except ExplorerError as exc:
        st.warning(str(exc))


if __name__ == "__main__":
    main()
