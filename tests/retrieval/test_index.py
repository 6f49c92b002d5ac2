"""Faiss indexes: Flat equals torch top-k, exclusion, save/load, sharding, approximate recall."""

import faiss
import numpy as np
import pytest
import torch

from seqbert.retrieval.index import (
    IndexConfig,
    build_index,
    exact_search,
    index_bytes,
    load_index,
    save_index,
    search,
    set_search_params,
)


def clustered(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    """Gaussian blobs: the structure IVF/HNSW exploit (uniform noise has none)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32) * 3
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


def recall_at(found: np.ndarray, I_ref: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, I_ref)]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force_torch_topk(metric):
    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(301, 17)).astype(np.float32), rng.normal(size=(13, 17)).astype(np.float32)
    ids = rng.permutation(10_000)[:301]  # arbitrary external ids
    D, found = search(build_index(xb, IndexConfig("Flat", metric), ids=ids), xq, k=7)
    s = torch.from_numpy(xq) @ torch.from_numpy(xb).T  # (13, 301)
    if metric == "l2":
        s = -(torch.cdist(torch.from_numpy(xq), torch.from_numpy(xb)) ** 2)
    top = torch.topk(s, 7, dim=1)
    np.testing.assert_array_equal(found, ids[top.indices.numpy()])
    np.testing.assert_allclose(D, top.values.numpy() * (1 if metric == "ip" else -1), rtol=1e-4, atol=1e-4)
    D_ref, I_ref = exact_search(xb, xq, 7, metric, ids=ids)
    np.testing.assert_array_equal(found, I_ref)


def test_search_excludes_seen_ids_and_returns_exactly_k():
    rng = np.random.default_rng(1)
    xb, xq = rng.normal(size=(200, 9)).astype(np.float32), rng.normal(size=(11, 9)).astype(np.float32)
    ids = np.arange(1000, 1200)
    index = build_index(xb, IndexConfig("Flat"), ids=ids)
    _, I_all = search(index, xq, 30)
    exclude = [set(I_all[q, : 2 * q].tolist()) for q in range(11)]  # drop the best 0, 2, ..., 20 per row
    exclude[3] = np.array(sorted(exclude[3]))  # arrays work as well as sets
    D, found = search(index, xq, 10, exclude=exclude)
    scores = xq @ xb.T  # (11, 200)
    for q in range(11):
        assert (found[q] >= 0).all() and not set(found[q]) & set(exclude[q])
        masked = scores[q].copy()
        masked[[i - 1000 for i in exclude[q]]] = -np.inf
        np.testing.assert_array_equal(found[q], ids[np.argsort(-masked)[:10]])


def test_exclusion_requeries_when_approximate_search_comes_back_short():
    xb = clustered(2000, 16, 20, seed=2)
    index = build_index(xb, IndexConfig("IVF20,Flat", nprobe=1))  # one list: few hits per query
    xq = xb[:5] + 0.01
    _, first = search(index, xq, 50)
    exclude = [set(first[q][first[q] >= 0].tolist()) for q in range(5)]  # ban everything the 1st pass saw
    D, found = search(index, xq, 50, exclude=exclude)
    for q in range(5):
        valid = found[q][found[q] >= 0]
        assert not set(valid) & exclude[q]
        assert len(set(valid)) == len(valid)
        # with nprobe=1 only one list is reachable: ids may run out, but every reachable one is returned
        assert len(valid) == 50 or np.isneginf(D[q][found[q] < 0]).all()


def test_exclusion_input_is_checked():
    index = build_index(np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError, match="one per query"):
        search(index, np.eye(8, dtype=np.float32)[:2], 3, exclude=[{1}])
    with pytest.raises(ValueError, match="k must be"):
        search(index, np.eye(8, dtype=np.float32), 9)
    with pytest.raises(ValueError, match="dim"):
        search(index, np.ones((2, 5), np.float32), 3)


@pytest.mark.parametrize("factory,shards", [("Flat", 1), ("IVF16,Flat", 1), ("HNSW8", 1), ("Flat", 3)])
def test_save_load_round_trip(tmp_path, factory, shards):
    xb = clustered(800, 12, 8, seed=3)
    index = build_index(
        xb, IndexConfig(factory, nprobe=4, ef_search=40, num_shards=shards), ids=np.arange(800) * 7
    )
    D, found = search(index, xb[:9], 10)
    path = save_index(index, tmp_path / "x.faiss")
    again = load_index(path)
    D2, I2 = search(again, xb[:9], 10)
    np.testing.assert_array_equal(found, I2)
    np.testing.assert_allclose(D, D2)
    assert again.ntotal == 800 and index_bytes(again) > 800 * 12 * 4 // 2


def test_sharded_flat_equals_unsharded():
    data = clustered(1024, 10, 5, seed=4)
    xb, xq = data[:1001], data[1001:]
    ids = np.random.default_rng(0).permutation(1001) + 50
    D1, I1 = search(build_index(xb, IndexConfig("Flat"), ids=ids), xq, 25)
    D4, I4 = search(build_index(xb, IndexConfig("Flat", num_shards=4), ids=ids), xq, 25)
    np.testing.assert_array_equal(I1, I4)
    np.testing.assert_allclose(D1, D4, rtol=1e-5)
    exclude = [set(I1[q, :5].tolist()) for q in range(23)]
    np.testing.assert_array_equal(search(build_index(xb, IndexConfig("Flat", num_shards=4), ids=ids), xq, 5, exclude)[1],
                                  I1[:, 5:10])  # fmt: skip


@pytest.mark.parametrize(
    "config,floor",
    [
        (IndexConfig("IVF32,Flat", "l2", nprobe=8), 0.95),
        (IndexConfig("HNSW16", "l2", ef_search=64), 0.95),
        (IndexConfig("IVF32,PQ16x4", "l2", nprobe=8), 0.45),  # 8 bytes for 128: lossy by design
    ],
)
def test_approximate_indexes_reach_sane_recall(config, floor):
    data = clustered(4050, 32, 40, seed=6)
    xb, xq = data[:4000], data[4000:]  # held-out queries from the same clusters
    _, I_ref = exact_search(xb, xq, 10, "l2")
    _, found = search(build_index(xb, config), xq, 10)
    assert recall_at(found, I_ref, 10) >= floor


def test_search_params_reach_through_wrappers():
    xb = clustered(500, 8, 4, seed=8)
    index = build_index(xb, IndexConfig("IVF8,Flat", nprobe=3, num_shards=2))
    set_search_params(index, nprobe=5, ef_search=99)  # efSearch does not apply to IVF: ignored
    for i in range(index.count()):
        assert faiss.extract_index_ivf(index.at(i)).nprobe == 5


def test_config_and_input_errors_name_the_field():
    with pytest.raises(ValueError, match="IndexConfig.metric"):
        IndexConfig(metric="cosine")
    with pytest.raises(ValueError, match="IndexConfig.nprobe"):
        IndexConfig(nprobe=0)
    with pytest.raises(ValueError, match="IndexConfig.factory"):
        build_index(np.ones((10, 4), np.float32), IndexConfig("NotAnIndex"))
    with pytest.raises(ValueError, match="ids must have shape"):
        build_index(np.ones((10, 4), np.float32), ids=np.arange(9))
    with pytest.raises(ValueError, match="unique"):
        build_index(np.ones((3, 4), np.float32), ids=np.array([1, 1, 2]))


@pytest.mark.gpu
def test_gpu_index_matches_cpu():
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss has no GPU support here")
    xb = clustered(2000, 16, 10, seed=9)
    _, I_cpu = search(build_index(xb, IndexConfig("Flat")), xb[:20], 10)
    gpu = build_index(xb, IndexConfig("Flat", gpu=True))
    assert "Gpu" in type(gpu).__name__ or faiss.get_num_gpus() == 0
    np.testing.assert_array_equal(search(gpu, xb[:20], 10)[1], I_cpu)
