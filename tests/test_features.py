"""Tests for layerwise.features on small synthetic activations and encoders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from layerwise.features import (
    dictionary_overlap,
    label_distribution,
    label_selectivity,
    overlap_summary,
    select_examples,
    selectivity_null,
    special_rows,
    split_half_selectivity,
    split_halves,
    text_feature_matrix,
    token_map,
    top_texts,
    top_tokens,
    top_variance_features,
)

D = 12
F = 20


def _relu_encoder(seed: int = 0, d: int = D, f: int = F):
    """A tiny SAE-like encoder: ReLU(x W + b), nonnegative and sparse-ish."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, f)).astype(np.float32)
    b = rng.normal(scale=0.5, size=f).astype(np.float32) - 0.5

    def encode(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32
        return np.maximum(x @ w + b, 0.0)

    return encode


def _identity_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


@pytest.fixture
def split(tmp_path):
    """A memmapped float16 split: 15 texts of 1..12 tokens, rows grouped by text."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 13, size=15)
    text_id = np.repeat(np.arange(15), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    token_id = rng.integers(0, 30, size=text_id.size)
    mm = np.memmap(tmp_path / "acts.f16", dtype=np.float16, mode="w+", shape=(text_id.size, D))
    mm[:] = rng.normal(size=(text_id.size, D)).astype(np.float16)
    mm.flush()
    acts = np.memmap(tmp_path / "acts.f16", dtype=np.float16, mode="r", shape=(text_id.size, D))
    return acts, text_id, position, token_id, 15


def _direct(encode, acts, text_id, n_texts, reduce):
    f = encode(np.asarray(acts, dtype=np.float32))
    red = np.max if reduce == "max" else np.mean
    return np.stack([red(f[text_id == t], axis=0) for t in range(n_texts)]), f


# ------------------------------------------------------------------------ text_feature_matrix


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_text_feature_matrix_matches_numpy_for_any_chunk(split, reduce):
    acts, text_id, _, _, n_texts = split
    enc = _relu_encoder()
    expected, f = _direct(enc, acts, text_id, n_texts, reduce)
    for chunk in (1, 3, 7, 64, 10_000):
        tf = text_feature_matrix(enc, acts, text_id, n_texts, reduce=reduce, chunk=chunk)
        assert tf.per_text.dtype == np.float32
        assert tf.per_text.shape == (n_texts, F)
        np.testing.assert_allclose(tf.per_text, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(tf.fire_count, (f > 0).sum(axis=0))
        assert tf.n_tokens == acts.shape[0]
        np.testing.assert_array_equal(tf.alive, (f > 0).any(axis=0))


def test_text_feature_matrix_unsorted_rows(split):
    """Rows interleaved across texts give the same result as grouped rows."""
    acts, text_id, _, _, n_texts = split
    enc = _relu_encoder()
    perm = np.random.default_rng(5).permutation(text_id.size)
    acts_p = np.asarray(acts)[perm]
    expected = text_feature_matrix(enc, acts, text_id, n_texts).per_text
    got = text_feature_matrix(enc, acts_p, text_id[perm], n_texts, chunk=5).per_text
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_text_feature_matrix_empty_text_warns(split, caplog):
    acts, text_id, _, _, n_texts = split
    with caplog.at_level(logging.WARNING, logger="layerwise.features"):
        tf = text_feature_matrix(_relu_encoder(), acts, text_id, n_texts + 2)
    assert "2 of 17 texts have no token rows" in caplog.text
    assert np.all(tf.per_text[n_texts:] == 0)


# ------------------------------------------------------------------------ ranking


def test_top_variance_features_planted_first():
    rng = np.random.default_rng(0)
    per_text = rng.uniform(0, 1, size=(50, 30)).astype(np.float32)
    per_text[:, 17] = rng.uniform(0, 10, size=50)  # variance ~100x the others
    per_text[:, 3] = 0.0  # dead feature: zero variance
    order = top_variance_features(per_text, 5)
    assert order[0] == 17
    assert order.shape == (5,)
    assert 3 not in order
    full = top_variance_features(per_text, 30)
    assert full[-1] == 3
    var = per_text.astype(np.float64).var(axis=0)
    assert np.all(np.diff(var[full]) <= 0)


def test_top_variance_features_tie_break_by_index():
    per_text = np.tile(np.array([[0.0], [1.0]], dtype=np.float32), (1, 4))
    np.testing.assert_array_equal(top_variance_features(per_text, 4), [0, 1, 2, 3])


def test_top_texts_order():
    per_text = np.array([[0.1, 0], [0.9, 0], [0.5, 0], [0.9, 0]], dtype=np.float32)
    got = top_texts(per_text, 0, 3)
    assert [i for i, _ in got] == [1, 3, 2]
    assert got[0][1] == pytest.approx(0.9)


# ------------------------------------------------------------------------ top_tokens


def test_top_tokens_finds_planted_token():
    rng = np.random.default_rng(2)
    n, f = 3000, 6
    token_id = rng.integers(0, 50, size=n)
    token_id[rng.choice(n, 40, replace=False)] = 42
    token_id[0] = 999  # a single occurrence: must be excluded by min_count
    acts = rng.uniform(-1, 0.3, size=(n, f)).astype(np.float16)
    acts[token_id == 42, 4] = 5.0
    acts[0, 4] = 50.0
    res = top_tokens(_identity_relu, acts, token_id, [4, 1], k=3, min_count=5, chunk=257)
    assert list(res) == [4, 1]
    tok, mean, count = res[4][0]
    assert tok == 42
    assert mean == pytest.approx(5.0)
    assert count == int((token_id == 42).sum())
    assert all(t != 999 for t, _, _ in res[4])
    assert len(res[1]) == 3
    means = [m for _, m, _ in res[1]]
    assert means == sorted(means, reverse=True)
    # Chunk size does not change the result; a low min_count admits the single occurrence.
    assert top_tokens(_identity_relu, acts, token_id, [4, 1], k=3, chunk=10_000) == res
    res1 = top_tokens(_identity_relu, acts, token_id, [4], k=1, min_count=1)
    assert res1[4][0][0] == 999


def test_top_tokens_drops_never_firing_tokens():
    acts = np.zeros((20, 3), dtype=np.float32)
    acts[:10, 0] = 1.0
    token_id = np.repeat([7, 8], 10)
    res = top_tokens(_identity_relu, acts, token_id, [0, 2], k=2, min_count=1)
    assert res[0] == [(7, 1.0, 10)]
    assert res[2] == []


# ------------------------------------------------------------------------ label_selectivity


def _selectivity_data():
    rng = np.random.default_rng(3)
    n_classes, n_texts = 3, 300
    labels = rng.integers(0, n_classes, size=n_texts)
    per_text = np.zeros((n_texts, 6), dtype=np.float32)
    for c in range(n_classes):  # feature c fires only on label-c texts
        per_text[:, c] = np.where(labels == c, 1.0 + rng.uniform(size=n_texts), 0.0)
    per_text[:, 3] = rng.uniform(size=n_texts)  # pure noise
    per_text[:, 4] = 0.0  # never fires
    per_text[:, 5] = rng.integers(0, 3, size=n_texts)  # heavy ties
    return per_text, labels, n_classes


def test_label_selectivity_planted_and_noise():
    per_text, labels, n_classes = _selectivity_data()
    sel = label_selectivity(per_text, labels, n_classes)
    for c in range(n_classes):
        assert sel.auc[c] == pytest.approx(1.0)
        assert sel.best_class[c] == c
    # ~100 positives vs ~200 negatives: AUC std ~ 0.035, so 0.15 is > 4 sigma.
    assert np.all(np.abs(sel.auc_per_class[3] - 0.5) < 0.15)
    assert abs(sel.auc[3] - 0.5) < 0.15
    np.testing.assert_array_equal(sel.auc_per_class[4], 0.5)
    assert sel.auc[4] == 0.5
    np.testing.assert_array_equal(sel.class_counts, np.bincount(labels, minlength=n_classes))


def test_label_selectivity_matches_sklearn():
    per_text, labels, n_classes = _selectivity_data()
    sel = label_selectivity(per_text, labels, n_classes, block=4)  # also exercises blocking
    for feat in range(per_text.shape[1]):
        for c in range(n_classes):
            expected = roc_auc_score(labels == c, per_text[:, feat])
            assert sel.auc_per_class[feat, c] == pytest.approx(expected, abs=1e-12)
        best = max(roc_auc_score(labels == c, per_text[:, feat]) for c in range(n_classes))
        assert sel.auc[feat] == pytest.approx(best, abs=1e-12)


def test_label_selectivity_absent_class_skipped(caplog):
    per_text, labels, _ = _selectivity_data()
    with caplog.at_level(logging.WARNING, logger="layerwise.features"):
        sel = label_selectivity(per_text, labels, 4)  # class 3 has no texts
    assert "[3]" in caplog.text
    assert np.all(np.isnan(sel.auc_per_class[:, 3]))
    assert np.all(sel.best_class < 3)
    assert np.all(np.isfinite(sel.auc))


# ------------------------------------------------------------------------ dictionary overlap


def test_dictionary_overlap_identical_and_permuted():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(300, 64)).astype(np.float32)
    np.testing.assert_allclose(dictionary_overlap(w, w), 1.0, atol=1e-5)
    perm = rng.permutation(300)
    scaled = w[perm] * rng.uniform(0.1, 10, size=(300, 1)).astype(np.float32)
    mc = dictionary_overlap(w, scaled, block=37)
    np.testing.assert_allclose(mc, 1.0, atol=1e-5)
    summary = overlap_summary(mc)
    assert summary["mmcs"] == pytest.approx(1.0, abs=1e-5)
    assert summary["kept_frac"] == 1.0


def test_dictionary_overlap_random_directions_small():
    # For F=256 random unit directions in d=384, each cosine is ~N(0, 1/d) (std 0.051), so the
    # max over 256 of them is about sqrt(2 ln 256 / 384) ~ 0.17 (in practice ~0.14).
    rng = np.random.default_rng(5)
    a = rng.normal(size=(256, 384))
    b = rng.normal(size=(256, 384))
    mc = dictionary_overlap(a, b, block=50)
    summary = overlap_summary(mc, threshold=0.7)
    assert 0.08 < summary["mmcs"] < 0.3
    assert summary["kept_frac"] == 0.0
    np.testing.assert_allclose(mc, dictionary_overlap(a, b), atol=1e-6)


def test_overlap_summary_threshold():
    s = overlap_summary(np.array([0.2, 0.7, 0.9, 1.0]), threshold=0.7)
    assert s["mmcs"] == pytest.approx(0.7)
    assert s["kept_frac"] == 0.75
    assert s["n_features"] == 4


# ------------------------------------------------------------------------ labels, examples


def test_label_distribution():
    labels = np.array([0, 1, 1, 2, 1, 0])
    dist = label_distribution([1, 2, 4, 0], labels, 3)
    np.testing.assert_allclose(dist.fractions, [0.25, 0.75, 0.0])
    assert dist.dominant == 1
    fractions, dominant = label_distribution([0, 3], labels, 3)
    assert dominant == 0  # tie between 0 and 2 -> lowest index
    assert fractions.sum() == pytest.approx(1.0)


def test_select_examples_seeded_and_covers_labels():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, size=400)
    a = select_examples(labels, 3, seed=0)
    assert a == select_examples(labels, 3, seed=0)
    assert a != select_examples(labels, 3, seed=1)
    chosen_labels = labels[a]
    np.testing.assert_array_equal(np.bincount(chosen_labels, minlength=4), [3, 3, 3, 3])
    assert a == sorted(a, key=lambda i: (labels[i], i))


def test_select_examples_small_label_takes_all(caplog):
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 2])
    with caplog.at_level(logging.WARNING, logger="layerwise.features"):
        got = select_examples(labels, 2, seed=0)
    assert "per_label=2 requested but label 1 has only 1 texts" in caplog.text
    assert 4 in got
    assert len(got) == 5


# ------------------------------------------------------------------------ token_map


def test_token_map_rows_in_position_order(split):
    acts, text_id, position, token_id, _ = split
    # Shuffle one text's rows (positions out of order) to check the sort.
    text = int(np.argmax(np.bincount(text_id)))
    rows = np.flatnonzero(text_id == text)
    shuffled = rows[np.random.default_rng(7).permutation(rows.size)]
    position = position.copy()
    token_id = token_id.copy()
    acts_arr = np.asarray(acts).copy()
    position[rows] = position[shuffled]
    token_id[rows] = token_id[shuffled]
    acts_arr[rows] = acts_arr[shuffled]

    enc = _relu_encoder()
    tm = token_map(enc, acts_arr, text_id, position, token_id, text, [5, 0, 11])
    order = rows[np.argsort(position[rows])]
    np.testing.assert_array_equal(tm["rows"], order)
    np.testing.assert_array_equal(tm["position"], np.arange(rows.size))
    np.testing.assert_array_equal(tm["token_id"], token_id[order])
    expected = enc(acts_arr[order].astype(np.float32))[:, [5, 0, 11]]
    assert tm["activations"].shape == (rows.size, 3)
    np.testing.assert_allclose(tm["activations"], expected, rtol=1e-6)
    assert tm["text_index"] == text


# ------------------------------------------------------------------------ argument errors


def test_bad_counts_raise_naming_value():
    per_text = np.random.default_rng(0).uniform(size=(5, 4))
    with pytest.raises(ValueError, match="n=0"):
        top_variance_features(per_text, 0)
    with pytest.raises(ValueError, match="k=-2"):
        top_texts(per_text, 0, -2)
    with pytest.raises(ValueError, match="per_label=0"):
        select_examples(np.array([0, 1]), 0, seed=0)
    with pytest.raises(ValueError, match="k=0"):
        top_tokens(_identity_relu, per_text, np.arange(5), [0], k=0)
    with pytest.raises(ValueError, match=r"feature index 9 out of range .*F=4"):
        top_texts(per_text, 9, 1)


def test_large_counts_clip_with_warning(caplog):
    per_text = np.random.default_rng(0).uniform(size=(5, 4))
    with caplog.at_level(logging.WARNING, logger="layerwise.features"):
        assert top_variance_features(per_text, 100).shape == (4,)
        assert len(top_texts(per_text, 1, 50)) == 5
    assert "n=100 requested but only 4 features available" in caplog.text
    assert "k=50 requested but only 5 texts available" in caplog.text


def test_width_mismatch_raises_naming_widths(split):
    acts, text_id, position, token_id, n_texts = split
    enc = _relu_encoder()
    with pytest.raises(ValueError, match=r"d_in=8 .*D=12"):
        text_feature_matrix(enc, acts, text_id, n_texts, d_in=8)
    with pytest.raises(ValueError, match=r"d_in=16 .*D=12"):
        top_tokens(enc, acts, token_id, [0], k=1, d_in=16)
    with pytest.raises(ValueError, match=r"d_in=3 .*D=12"):
        token_map(enc, acts, text_id, position, token_id, 0, [0], d_in=3)
    with pytest.raises(ValueError, match=r"width 12 but W_dec_b has width 10"):
        dictionary_overlap(np.ones((4, 12)), np.ones((4, 10)))

    def bad_encode(x):
        return np.zeros((x.shape[0] + 1, F))

    with pytest.raises(ValueError, match="encode returned shape"):
        text_feature_matrix(bad_encode, acts, text_id, n_texts)


# ------------------------------------------------------------------------ calibrated selectivity


def _two_class_chance(n1: int, n0: int) -> float:
    """E[max(AUC, 1 - AUC)] under random labels: AUC is ~normal around 1/2 with variance
    (n1 + n0 + 1) / (12 n1 n0), and E|Z| = sqrt(2 / pi)."""
    return 0.5 + np.sqrt((n1 + n0 + 1) / (12 * n1 * n0)) * np.sqrt(2 / np.pi)


def test_null_mean_is_the_chance_level_of_a_max_of_aucs():
    """On noise, the permutation null sits at the chance level of the best one-vs-rest AUC:
    the closed form for two classes, and for five classes the mean selectivity that noise
    features get with the true labels (well above 0.5 and above the two-class level)."""
    rng = np.random.default_rng(0)
    two = np.repeat([0, 1], 100)
    noise = rng.random((200, 40))
    null2 = selectivity_null(noise, two, 2, 200, seed=1)
    assert null2.samples.shape == (200, 40)
    assert null2.mean.mean() == pytest.approx(_two_class_chance(100, 100), abs=0.004)
    assert np.all(null2.q95 > null2.mean)

    five = np.repeat(np.arange(5), 40)
    noise5 = rng.random((200, 400))
    null5 = selectivity_null(noise5[:, :40], five, 5, 200, seed=1)
    observed = label_selectivity(noise5, five, 5).auc.mean()
    assert null5.mean.mean() == pytest.approx(observed, abs=0.006)
    assert null5.mean.mean() > null2.mean.mean() + 0.01 > 0.53


def test_null_is_seeded_and_a_planted_feature_has_a_large_excess():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 30)
    per_text = np.c_[labels + 0.1 * rng.random(90), rng.random((90, 3))]
    a = selectivity_null(per_text, labels, 3, 50, seed=7)
    np.testing.assert_array_equal(a.samples, selectivity_null(per_text, labels, 3, 50, 7).samples)
    assert not np.array_equal(a.samples, selectivity_null(per_text, labels, 3, 50, 8).samples)
    auc = label_selectivity(per_text, labels, 3).auc
    excess = auc - a.mean
    assert auc[0] == 1.0 and excess[0] > 0.35
    assert np.all(np.abs(excess[1:]) < 0.15)
    assert a.p_value(auc)[0] == pytest.approx(1 / 51)
    with pytest.raises(ValueError, match="n_permutations=0"):
        selectivity_null(per_text, labels, 3, 0, seed=0)


def test_split_halves_are_disjoint_stratified_and_deterministic():
    labels = np.r_[np.zeros(11, int), np.ones(20, int), np.full(7, 2)]
    np.random.default_rng(0).shuffle(labels)
    halves = split_halves(labels, seed=3, n_classes=3)
    assert np.intersect1d(halves.select, halves.score).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[halves.select, halves.score]), np.arange(38))
    assert np.bincount(labels[halves.select], minlength=3).tolist() == [5, 10, 3]
    assert np.bincount(labels[halves.score], minlength=3).tolist() == [6, 10, 4]
    again = split_halves(labels, seed=3, n_classes=3)
    np.testing.assert_array_equal(halves.select, again.select)
    assert not np.array_equal(halves.select, split_halves(labels, seed=4, n_classes=3).select)
    with pytest.raises(ValueError, match="at least 2 texts per half"):
        split_halves(np.array([0, 1, 1]), seed=0)


def test_split_half_selectivity_chooses_on_one_half_and_scores_on_the_other():
    """A feature with large variance only on the selecting half is chosen but scores at chance
    on the scoring half; ``among`` keeps a feature out of the choice."""
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 40)
    halves = split_halves(labels, seed=0)
    per_text = rng.random((80, 6)) * 0.1
    per_text[:, 1] = labels * 0.5 + 0.05 * rng.random(80)  # label-carrying, moderate variance
    per_text[:, 2] = 0.0
    per_text[halves.select, 2] = 10 * rng.random(halves.select.size)  # noisy, select half only
    scored = split_half_selectivity(per_text, labels, 2, halves, 2, n_permutations=30, seed=0)
    np.testing.assert_array_equal(scored.features, [2, 1])
    assert scored.auc[0] == 0.5  # constant on the scoring half
    assert scored.auc[1] == 1.0 and scored.excess[1] > 0.4
    np.testing.assert_allclose(scored.excess, scored.auc - scored.null.mean)
    among = np.ones(6, bool)
    among[2] = False
    kept = split_half_selectivity(per_text, labels, 2, halves, 2, among=among)
    assert kept.features[0] == 1 and 2 not in kept.features


def test_special_share_from_the_streaming_pass(split):
    """Activation mass on special-token rows, summed in the same pass for any chunk size: a
    feature firing only on [CLS] rows has share 1, one never on them share 0."""
    acts, text_id, _, token_id, n_texts = split
    cls = np.r_[True, text_id[1:] != text_id[:-1]]  # first row of each text
    token_id = np.where(cls, 101, token_id)
    special = special_rows(token_id, [101, 102])
    np.testing.assert_array_equal(special, cls)

    def encode(x: np.ndarray) -> np.ndarray:
        relu = np.maximum(x[:, :3], 0.0)
        on_cls = (x[:, -1] > 100)[:, None]
        return np.c_[relu, np.where(on_cls, 1.0 + relu[:, :1], 0.0), np.where(on_cls, 0, 2.0)]

    marked = np.asarray(acts, dtype=np.float32).copy()
    marked[cls, -1] = 1000.0  # lets the encoder see which rows are [CLS]
    direct = encode(marked)
    for chunk in (4, 1000):
        tf = text_feature_matrix(encode, marked, text_id, n_texts, chunk=chunk, special=special)
        np.testing.assert_allclose(tf.mass, direct.sum(axis=0), rtol=1e-6)
        np.testing.assert_allclose(tf.special_mass, direct[special].sum(axis=0), rtol=1e-6)
    share = tf.special_share
    assert share[3] == 1.0 and share[4] == 0.0
    assert np.all((share >= 0) & (share <= 1))
    with pytest.raises(ValueError, match="special_share needs"):
        _ = text_feature_matrix(encode, marked, text_id, n_texts).special_share
