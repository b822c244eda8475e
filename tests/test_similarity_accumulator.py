"""Tests for layerwise.similarity.accumulator: the streamed statistics equal the direct formulas
(any batching, padding, block layout and matmul dtype), jackknife replicates are exact, and CIs
are deterministic."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from layerwise.similarity import _kernels
from layerwise.similarity.accumulator import LayerSimilarityAccumulator, batch_blocks
from layerwise.similarity.metrics import linear_cka

# --------------------------------------------------------------------------------------------
# Synthetic "PT vs FT" corpus: per text and layer, token matrices [len_i, D].
# --------------------------------------------------------------------------------------------


class Corpus:
    """Token-level hidden states of a toy PT and FT model, kept whole as the reference."""

    def __init__(
        self,
        n_texts: int,
        n_layers: int,
        dim: int,
        seed: int,
        min_len: int = 1,
        max_len: int = 12,
        drift: float = 0.5,
        identical: bool = False,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.n_texts, self.n_layers, self.dim = n_texts, n_layers, dim
        self.lengths = rng.integers(min_len, max_len + 1, size=n_texts)
        offset = rng.normal(size=dim) * 3.0  # non-zero means: centring must matter
        self.pt: list[list[np.ndarray]] = []  # [layer][text] -> [len, D]
        self.ft: list[list[np.ndarray]] = []
        for layer in range(n_layers):
            mix = np.eye(dim) + drift * layer * rng.normal(size=(dim, dim)) / np.sqrt(dim)
            pts, fts = [], []
            for n in self.lengths:
                x = (rng.normal(size=(n, dim)) + offset).astype(np.float32)
                if identical:
                    y = x.copy()
                else:
                    noise = drift * layer * rng.normal(size=(n, dim))
                    y = (x @ mix + noise).astype(np.float32)
                pts.append(x)
                fts.append(y)
            self.pt.append(pts)
            self.ft.append(fts)

    def tokens(self, layer: int, which: str, texts: np.ndarray | None = None) -> np.ndarray:
        src = self.pt if which == "pt" else self.ft
        idx = range(self.n_texts) if texts is None else texts
        return np.concatenate([src[layer][i] for i in idx]).astype(np.float64)

    def batches(
        self,
        batch_sizes: list[int],
        order: np.ndarray | None = None,
        extra_pad: int = 0,
        seed: int = 123,
    ) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, list[int]]]:
        """Padded batches: position 0 is a masked-out [CLS], padding holds garbage values."""
        rng = np.random.default_rng(seed)
        order = np.arange(self.n_texts) if order is None else order
        assert sum(batch_sizes) == self.n_texts
        start = 0
        for bs in batch_sizes:
            ids = order[start : start + bs]
            start += bs
            t = 1 + int(self.lengths[ids].max()) + extra_pad
            mask = torch.zeros(bs, t, dtype=torch.bool)
            pt_layers, ft_layers = [], []
            for layer in range(self.n_layers):
                hp = torch.from_numpy(rng.normal(size=(bs, t, self.dim)).astype(np.float32) * 50)
                hf = torch.from_numpy(rng.normal(size=(bs, t, self.dim)).astype(np.float32) * 50)
                for r, i in enumerate(ids):
                    n = int(self.lengths[i])
                    hp[r, 1 : 1 + n] = torch.from_numpy(self.pt[layer][i])
                    hf[r, 1 : 1 + n] = torch.from_numpy(self.ft[layer][i])
                    mask[r, 1 : 1 + n] = True
                pt_layers.append(hp)
                ft_layers.append(hf)
            yield pt_layers, ft_layers, mask, [int(i) for i in ids]


def _uneven(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = []
    while n > 0:
        s = min(n, int(rng.integers(1, 9)))
        sizes.append(s)
        n -= s
    return sizes


# Agreement with the float64 direct formula for each per-batch matmul dtype.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-6}
BOTH_DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


def _feed(
    corpus: Corpus, n_blocks: int = 4, dtype: torch.dtype = torch.float32, **kwargs
) -> LayerSimilarityAccumulator:
    acc = LayerSimilarityAccumulator(
        corpus.n_layers, corpus.dim, corpus.n_texts, n_blocks=n_blocks, matmul_dtype=dtype
    )
    for pt, ft, mask, ids in corpus.batches(**kwargs):
        acc.update(pt, ft, mask, ids)
    return acc


def _cos_reference(corpus: Corpus, layer: int) -> float:
    x, y = corpus.tokens(layer, "pt"), corpus.tokens(layer, "ft")
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.mean())


@BOTH_DTYPES
def test_self_comparison_gives_one_everywhere(dtype: torch.dtype) -> None:
    corpus = Corpus(n_texts=40, n_layers=3, dim=6, seed=3, identical=True)
    acc = _feed(corpus, batch_sizes=_uneven(40), dtype=dtype)
    tol = RTOL[dtype]
    for r in acc.result(n_boot=200, seed=0):
        for key in ("cosine", "cosine_lo", "cosine_hi", "cka", "cka_lo", "cka_hi"):
            assert r[key] == pytest.approx(1.0, abs=tol), key
        assert r["cka_se"] == pytest.approx(0.0, abs=tol)
        assert r["n_tokens"] == int(corpus.lengths.sum())
    np.testing.assert_array_equal(acc.pooled(1, "pt"), acc.pooled(1, "ft"))


def test_scaled_and_rotated_ft() -> None:
    """Scaling keeps cosine and CKA at 1; a rotation keeps CKA at 1 but lowers the cosine."""
    corpus = Corpus(n_texts=20, n_layers=2, dim=8, seed=4, identical=True)
    q = torch.from_numpy(ortho_group.rvs(8, random_state=5)).float()
    for transform, cos_is_one in ((lambda h: 2.5 * h, True), (lambda h: h @ q, False)):
        acc = LayerSimilarityAccumulator(2, 8, 20, n_blocks=3)
        for pt, _, mask, ids in corpus.batches(_uneven(20, seed=1)):
            acc.update(pt, [transform(h) for h in pt], mask, ids)
        for r in acc.result(n_boot=50):
            assert r["cka"] == pytest.approx(1.0, abs=1e-6)
            assert (r["cosine"] == pytest.approx(1.0, abs=1e-6)) is cos_is_one


@BOTH_DTYPES
def test_streaming_equals_direct_formula(dtype: torch.dtype) -> None:
    """Uneven batches, shuffled text order (several blocks per batch), padding with garbage."""
    corpus = Corpus(n_texts=50, n_layers=3, dim=7, seed=5)
    order = np.random.default_rng(6).permutation(50)
    acc = _feed(corpus, n_blocks=4, dtype=dtype, batch_sizes=_uneven(50, seed=2), order=order)
    res = acc.result(n_boot=100)
    assert acc.n_tokens == int(corpus.lengths.sum())
    np.testing.assert_array_equal(acc.text_token_counts(), corpus.lengths)
    for layer, r in enumerate(res):
        x, y = corpus.tokens(layer, "pt"), corpus.tokens(layer, "ft")
        np.testing.assert_allclose(r["cka"], linear_cka(x, y), rtol=RTOL[dtype])
        np.testing.assert_allclose(r["cosine"], _cos_reference(corpus, layer), rtol=RTOL[dtype])
        for which, src in (("pt", corpus.pt), ("ft", corpus.ft)):
            expect = np.stack([t.astype(np.float64).mean(0) for t in src[layer]])
            np.testing.assert_allclose(acc.pooled(layer, which), expect, rtol=1e-5, atol=1e-5)
    # Layers drift apart in the toy model.
    assert res[0]["cka"] == pytest.approx(1.0) and res[2]["cka"] < res[1]["cka"] < 1.0


@BOTH_DTYPES
def test_leave_one_block_out_is_exact(dtype: torch.dtype) -> None:
    """Each jackknife replicate equals linear_cka on the tokens outside that block."""
    corpus = Corpus(n_texts=30, n_layers=2, dim=5, seed=7, drift=1.0)
    acc = _feed(corpus, n_blocks=4, dtype=dtype, batch_sizes=_uneven(30, seed=3))
    block = np.arange(30) * 4 // 30
    full, leave_out = acc.jackknife_cka(1)
    assert leave_out.shape == (4,)
    for j in range(4):
        keep = np.flatnonzero(block != j)
        ref = linear_cka(corpus.tokens(1, "pt", keep), corpus.tokens(1, "ft", keep))
        np.testing.assert_allclose(leave_out[j], ref, rtol=RTOL[dtype])
    ref_full = linear_cka(corpus.tokens(1, "pt"), corpus.tokens(1, "ft"))
    np.testing.assert_allclose(full, ref_full, rtol=RTOL[dtype])


def test_padding_length_changes_nothing() -> None:
    corpus = Corpus(n_texts=25, n_layers=2, dim=6, seed=8)
    sizes = _uneven(25, seed=4)
    a = _feed(corpus, batch_sizes=sizes, extra_pad=0, seed=1)
    b = _feed(corpus, batch_sizes=sizes, extra_pad=9, seed=2)  # other garbage in the padding
    for ra, rb in zip(a.result(n_boot=100), b.result(n_boot=100), strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_allclose(ra[key], rb[key], rtol=1e-12, err_msg=key)
    for layer in range(2):
        for which in ("pt", "ft"):
            np.testing.assert_array_equal(a.pooled(layer, which), b.pooled(layer, which))


def test_jackknife_ci_contains_estimate_and_narrows_with_data() -> None:
    widths = []
    for n_texts in (60, 960):
        corpus = Corpus(n_texts=n_texts, n_layers=2, dim=4, seed=9, max_len=6, drift=1.5)
        acc = _feed(
            corpus,
            n_blocks=10,
            batch_sizes=[16] * (n_texts // 16) + [n_texts % 16] * bool(n_texts % 16),
        )
        r = acc.result(n_boot=100)[1]
        assert 0.2 < r["cka"] < 0.95
        assert r["cka_lo"] < r["cka"] < r["cka_hi"]
        assert r["cka_se"] > 0
        widths.append(r["cka_hi"] - r["cka_lo"])
    # 16x the data: the interval should shrink by about 4x; demand at least 2x.
    assert widths[1] < widths[0] / 2


def test_accumulator_result_cis_deterministic() -> None:
    corpus = Corpus(n_texts=30, n_layers=2, dim=4, seed=12)
    acc = _feed(corpus, batch_sizes=_uneven(30))
    r1, r2 = acc.result(n_boot=200, seed=7), acc.result(n_boot=200, seed=7)
    assert r1 == r2
    r = r1[1]
    assert r["cosine_lo"] < r["cosine"] < r["cosine_hi"]
    assert acc.result(n_boot=200, seed=8)[1]["cosine_lo"] != r["cosine_lo"]


def test_accepts_inference_tensors_bf16_and_tensor_ids() -> None:
    corpus = Corpus(n_texts=12, n_layers=2, dim=4, seed=13)
    ref = LayerSimilarityAccumulator(2, 4, 12, n_blocks=2)
    acc = LayerSimilarityAccumulator(2, 4, 12, n_blocks=2)
    for pt, ft, mask, ids in corpus.batches(_uneven(12)):
        with torch.inference_mode():
            pt_b = [h.bfloat16() for h in pt]
            ft_b = [h.bfloat16() for h in ft]
            mask_i = mask.long()
        acc.update(pt_b, ft_b, mask_i, torch.tensor(ids))
        ref.update([h.float() for h in pt_b], [h.float() for h in ft_b], mask, ids)
    assert acc.result(n_boot=20) == ref.result(n_boot=20)


def test_texts_without_tokens_and_validation(caplog: pytest.LogCaptureFixture) -> None:
    acc = LayerSimilarityAccumulator(1, 3, 4, n_blocks=2)
    h = torch.randn(2, 5, 3)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True  # text 2 has tokens, text 3 is fully masked
    acc.update([h], [h], mask, [2, 3])
    with caplog.at_level(logging.WARNING, logger="layerwise.similarity.accumulator"):
        pooled = acc.pooled(0, "pt")
        res = acc.result(n_boot=10)
    assert np.isnan(pooled[[0, 1, 3]]).all() and np.isfinite(pooled[2]).all()
    assert "no tokens" in caplog.text
    assert res[0]["n_texts"] == 1 and res[0]["n_tokens"] == 3
    assert np.isnan(res[0]["cka_lo"])  # only one non-empty block
    with pytest.raises(ValueError, match="text_ids"):
        acc.update([h], [h], mask, [0, 4])
    with pytest.raises(ValueError, match="layers"):
        acc.update([h, h], [h], mask, [0, 1])
    with pytest.raises(ValueError, match="shape"):
        acc.update([h[..., :2]], [h], mask, [0, 1])
    with pytest.raises(IndexError):
        acc.pooled(1)


def test_memory_estimate_documented_example() -> None:
    mem = LayerSimilarityAccumulator.estimate_memory_bytes(7, 384, 1000, 10)
    assert 240e6 < mem["moments"] < 255e6


def test_float32_matmuls_survive_large_feature_means() -> None:
    """Outlier dimensions with |mean| >> std (as in BERT) must not spoil float32 moments."""
    rng = np.random.default_rng(18)
    n_texts, t, d = 64, 20, 16
    offset = np.zeros(d)
    offset[:3] = [300.0, -120.0, 50.0]
    x = rng.normal(size=(n_texts, t, d)) + offset
    y = x @ (np.eye(d) + 0.5 * rng.normal(size=(d, d))) + rng.normal(size=(n_texts, t, d))
    mask = torch.from_numpy(rng.random((n_texts, t)) < 0.8)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    acc = LayerSimilarityAccumulator(1, d, n_texts, n_blocks=4, matmul_dtype=torch.float32)
    for s in range(0, n_texts, 16):
        acc.update([xt[s : s + 16]], [yt[s : s + 16]], mask[s : s + 16], range(s, s + 16))
    ref = linear_cka(xt[mask].double(), yt[mask].double())
    np.testing.assert_allclose(acc.result(n_boot=10)[0]["cka"], ref, rtol=1e-6)


def test_text_split_across_updates() -> None:
    """A text whose tokens arrive in two updates (e.g. two windows) counts as one text."""
    corpus = Corpus(n_texts=10, n_layers=2, dim=4, seed=19, min_len=2)
    whole = _feed(corpus, dtype=torch.float64, batch_sizes=[10])
    split = LayerSimilarityAccumulator(2, 4, 10, n_blocks=4, matmul_dtype=torch.float64)
    for pt, ft, mask, ids in corpus.batches([10]):
        first = mask & (mask.cumsum(dim=1) <= 1)  # first token of each text
        split.update(pt, ft, first, ids)
        split.update(pt, ft, mask & ~first, ids)
    for rw, rs in zip(whole.result(n_boot=50), split.result(n_boot=50), strict=True):
        for key in rw:
            np.testing.assert_allclose(rs[key], rw[key], rtol=1e-10, err_msg=key)
    np.testing.assert_allclose(split.pooled(1, "ft"), whole.pooled(1, "ft"), rtol=1e-6)


def test_onednn_products_equal_plain_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU float32 moment products (oneDNN when this torch has it) agree with ``a @ b.T``
    and with the float64 direct formula; the plain-matmul fallback gives the same CKA."""
    rng = np.random.default_rng(21)
    a = torch.from_numpy(rng.normal(size=(24, 301))).float()  # odd sizes: tails of every kernel
    b = torch.from_numpy(rng.normal(size=(17, 301))).float()
    np.testing.assert_allclose(
        _kernels.matmul_nt(a, b).double(), a.double() @ b.double().T, rtol=1e-5, atol=1e-4
    )
    corpus = Corpus(n_texts=40, n_layers=2, dim=11, seed=22, min_len=3, max_len=30)
    fast = _feed(corpus, dtype=torch.float32, batch_sizes=[7, 13, 20])
    monkeypatch.setattr(_kernels, "onednn_linear", lambda: None)
    plain = _feed(corpus, dtype=torch.float32, batch_sizes=[7, 13, 20])
    rows = zip(fast.result(n_boot=20), plain.result(n_boot=20), strict=True)
    for layer, (rf, rp) in enumerate(rows):
        ref = linear_cka(corpus.tokens(layer, "pt"), corpus.tokens(layer, "ft"))
        np.testing.assert_allclose([rf["cka"], rp["cka"]], [ref, ref], rtol=1e-6)


def test_batch_blocks_deal_batches_round_robin() -> None:
    """Batch ``b`` goes whole to block ``b mod n_blocks``: every text gets a block and every
    batch touches one block only."""
    batches = [np.array([4, 0]), np.array([2, 5]), np.array([1]), np.array([3])]
    np.testing.assert_array_equal(batch_blocks(batches, 6, 3), [0, 2, 1, 0, 0, 1])
