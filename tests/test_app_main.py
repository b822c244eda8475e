"""Streamlit's AppTest drives every page of the explorer on the fixture tree: menus list what
exists, a typed sentence yields one value per token, a feature card shows top texts, bad input
gets a message, and nothing under the root changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from app_support import APP_FILE, KEY, SENTENCE, AppTree, app_tree, running_app  # noqa: F401
from streamlit.testing.v1 import AppTest

TIMEOUT = 60


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _page(at: AppTest, page: str) -> AppTest:
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def _warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


@pytest.fixture(scope="module")
def at(app_tree: AppTree) -> AppTest:  # noqa: F811
    with running_app(app_tree.root) as app:
        yield app


def test_overview_and_menus_list_what_exists(at: AppTest) -> None:
    assert not at.exception
    runs = at.dataframe[0].value
    assert runs[["model", "task", "seed"]].values.tolist() == [
        [KEY.model, KEY.task, "0"],
        [KEY.model, KEY.task, "shuffled"],
    ]
    stages = ["prepare", "finetune", "compare", "sae", "crosscoder", "features"]
    assert runs.loc[0, stages].tolist() == ["✓"] * 6 and runs.loc[0, "crosscoder layers"] == "1, 2"
    assert runs.loc[1, stages].tolist() == ["✓", "✓", "✓", "—", "✓", "—"]
    _page(at, "Sentence")
    assert at.sidebar.selectbox(key="model").options == [KEY.model]
    assert at.sidebar.selectbox(key="task").options == [KEY.task]
    assert at.sidebar.selectbox(key="seed").options == ["0", "shuffled"]
    assert at.selectbox(key="layer").options == ["1", "2"]


def test_sentence_page_gives_one_value_per_token(at: AppTest) -> None:
    _page(at, "Sentence")
    at.text_input(key="feature").input("").run()
    at.text_input(key="text").input(SENTENCE).run()
    assert not at.exception and not _warnings(at)
    per_token = at.dataframe[0].value
    assert per_token["token"].tolist()[:3] == ["[CLS]", "the", "book"]
    assert len(per_token) == len(SENTENCE.split()) + 2
    assert (per_token["activation"] >= 0).all()
    assert at.subheader[0].value.startswith("ft_L1 · feature ")
    at.text_input(key="feature").input("5").run()
    assert at.subheader[0].value.startswith("ft_L1 · feature 5 ")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("feature", "64", "feature 64 does not exist: the SAE ft_L1 has features 0..63"),
        ("feature", "seven", "'seven' is not a whole number"),
        ("text", "awful " * 40, "above this run's max_length of 32"),
    ],
)
def test_bad_input_gets_a_clear_message(at: AppTest, key: str, value: str, message: str) -> None:
    _page(at, "Sentence")
    at.text_input(key="feature").input("").run()
    at.text_input(key="text").input(SENTENCE).run()
    at.text_input(key=key).input(value).run()
    assert not at.exception
    assert any(message in w for w in _warnings(at)), _warnings(at)
    at.text_input(key=key).input("" if key == "feature" else SENTENCE).run()


def test_side_by_side_shows_every_layer_and_the_cosine_curve(at: AppTest) -> None:
    _page(at, "PT vs FT")
    at.text_input(key="text").input(SENTENCE).run()
    assert [s.value for s in at.subheader] == ["Layer 1", "Layer 2"]
    cosine = at.dataframe[0].value
    assert cosine["layer"].tolist() == [0, 1, 2]
    assert at.get("vega_lite_chart")


def test_feature_card_shows_top_texts_and_token_search_opens_cards(at: AppTest) -> None:
    _page(at, "Feature cards")
    at.selectbox(key="unit").set_value("ft_L2").run()
    at.text_input(key="feature").input("3").run()
    assert not at.exception and not _warnings(at)
    assert at.subheader[0].value == "ft_L2 · feature 3 of 64"
    texts = [m.value for m in at.markdown if "<small>text " in m.value]
    assert texts and all("label <b>" in t for t in texts)
    at.text_input(key="word").input("great").run()
    hits = at.dataframe[0].value
    assert len(hits) > 0 and "mean activation" in hits.columns
    first = int(hits["feature"].iloc[0])
    at.button(key=f"open_{first}").click().run()
    assert at.subheader[0].value == f"ft_L2 · feature {first} of 64"
    at.text_input(key="word").input("").run()
    picks = [b for b in at.button if b.key.startswith("pick_")]
    assert len(picks) == 3  # the features stage's top_n
    picks[1].click().run()
    assert at.subheader[0].value == f"ft_L2 · feature {picks[1].key[5:]} of 64"


def test_crosscoder_page_shows_r_histogram_latent_list_and_cards(at: AppTest) -> None:
    _page(at, "Crosscoders")
    at.text_input(key="latent").input("").run()
    assert at.selectbox(key="cc_layer").options == ["1", "2"]
    at.selectbox(key="cc_layer").set_value("2").run()
    assert not at.exception and not _warnings(at)
    assert at.get("vega_lite_chart")
    listed = at.dataframe[0].value
    assert listed["r"].is_monotonic_decreasing and set(listed["class"]) <= {
        "PT-only", "shared", "FT-only"
    }  # fmt: skip
    at.selectbox(key="cc_sort").set_value("r, PT-only first").run()
    assert at.dataframe[0].value["r"].is_monotonic_increasing
    latent = int(listed["latent"].iloc[0])
    at.text_input(key="latent").input(str(latent)).run()
    assert not at.exception and not _warnings(at)
    n_latents = at.metric[0].value.split(" of ")[1]
    assert at.subheader[0].value == f"crosscoder L2 · latent {latent} of {n_latents}"
    assert {"relative norm r", "class", "|d_PT|", "|d_FT|"} <= {m.label for m in at.metric}
    at.text_input(key="latent").input("").run()


def test_the_shuffled_control_browses_its_crosscoders_and_says_it_has_no_saes(
    at: AppTest,
) -> None:
    """Seed menu -> ``shuffled``: the Crosscoders page lists the control's latents, the
    Sentence page says SAEs run per seed only, the Results page names its own stages."""
    _page(at, "Crosscoders")
    at.sidebar.selectbox(key="seed").set_value("shuffled").run()
    at.text_input(key="latent").input("").run()
    assert not at.exception and not _warnings(at)
    assert at.selectbox(key="cc_layer").options == ["1", "2"]
    r = at.dataframe[0].value["r"]  # sorted by r, in whichever order the menu says
    assert len(r) > 0 and (r.is_monotonic_decreasing or r.is_monotonic_increasing)
    _page(at, "Sentence")
    assert any("seeds only" in w for w in _warnings(at)), _warnings(at)
    _page(at, "Results")
    ids = next(m.value for m in at.markdown if m.value.startswith("- prepare: `"))
    assert "- finetune: `" in ids and "- crosscoder: `" in ids and "- sae:" not in ids
    assert "`n/a`" not in ids, ids  # MLflow names the control's runs <stage>@<m>-<t>-shuffled
    at.sidebar.selectbox(key="seed").set_value("0").run()
    assert not at.exception


def test_results_page_shows_tables_claims_figures_and_run_ids(at: AppTest) -> None:
    _page(at, "Results")
    titles = [s.value for s in at.subheader]
    assert "The paper's claims for this model and task" in titles and "MLflow runs" in titles
    assert not at.info, [i.value for i in at.info]
    assert at.get("image")
    run_ids = [m.value for m in at.markdown if m.value.startswith("- prepare: `")]
    assert run_ids


def test_the_app_never_writes_into_the_tree(app_tree: AppTree, at: AppTest) -> None:  # noqa: F811
    before = _snapshot(app_tree.root)
    for page in ("Overview", "Sentence", "PT vs FT", "Feature cards", "Crosscoders", "Results"):
        _page(at, page)
    assert _snapshot(app_tree.root) == before


def test_an_empty_root_names_make_reproduce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERWISE_ROOT", str(tmp_path))
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("make reproduce" in i.value for i in at.info)
    assert list(tmp_path.iterdir()) == []
