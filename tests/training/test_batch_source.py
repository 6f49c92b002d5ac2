import pytest
import torch

from seqbert.training.data import TensorBatchSource, seeded_generator, shard


def noisy(raw, generator):
    return {"x": raw["x"], "noise": torch.rand(raw["x"].shape[0], generator=generator)}


def make_source(**kwargs):
    tensors = {"x": torch.arange(26), "y": torch.arange(26) * 10}
    return TensorBatchSource(tensors, batch_size=kwargs.pop("batch_size", 4), seed=7, **kwargs)


def test_an_epoch_visits_each_row_once_and_epochs_differ():
    source = make_source()
    assert source.num_batches(0) == 6  # 26 rows, drop_last: 6 batches of 4
    epoch0 = torch.cat([b["x"] for b in source.batches(0)])
    epoch1 = torch.cat([b["x"] for b in source.batches(1)])
    assert len(set(epoch0.tolist())) == 24 and not torch.equal(epoch0, epoch1)
    assert all(torch.equal(b["y"], b["x"] * 10) for b in source.batches(0))  # rows stay aligned


def test_batch_is_a_pure_function_of_seed_epoch_and_index():
    full = list(make_source(collate=noisy).batches(3))
    resumed = list(make_source(collate=noisy).batches(3, start=4))  # a fresh source, started mid-epoch
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["noise"], b["noise"])
    assert not torch.equal(full[0]["noise"], full[1]["noise"])  # per-batch randomness differs by index


def test_ranks_take_equal_slices_of_the_same_global_batch():
    source = make_source(collate=noisy)
    for index, whole in enumerate(source.batches(2)):
        parts = [next(iter(source.batches(2, index, rank, 2))) for rank in range(2)]
        assert torch.equal(torch.cat([p["x"] for p in parts]), whole["x"])
        assert torch.equal(torch.cat([p["noise"] for p in parts]), whole["noise"])


def test_no_shuffle_and_keep_last():
    source = make_source(shuffle=False, drop_last=False)
    batches = list(source.batches(0))
    assert len(batches) == 7 and batches[-1]["x"].tolist() == [24, 25]
    assert batches[0]["x"].tolist() == [0, 1, 2, 3]


def test_uneven_shard_is_refused():
    with pytest.raises(ValueError, match="does not split evenly over 4"):
        shard({"x": torch.arange(6)}, 0, 4)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same number of rows"):
        TensorBatchSource({"x": torch.zeros(4), "y": torch.zeros(5)}, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatchSource({"x": torch.zeros(4)}, batch_size=0)
    with pytest.raises(ValueError, match="make no batch"):
        TensorBatchSource({"x": torch.zeros(4)}, batch_size=5)


def test_seeded_generator_separates_nearby_keys():
    a = torch.rand(4, generator=seeded_generator(1, 0, 1))
    b = torch.rand(4, generator=seeded_generator(1, 1, 0))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.rand(4, generator=seeded_generator(1, 0, 1)))


def test_length_bucketing_keeps_every_row_once_and_groups_similar_lengths():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    tensors = {"x": torch.arange(1000)}
    plain = TensorBatchSource(tensors, batch_size=16, seed=3)
    bucketed = TensorBatchSource(tensors, batch_size=16, seed=3, lengths=lengths, bucket_batches=8)
    for epoch in (0, 1):
        rows = torch.cat([b["x"] for b in bucketed.batches(epoch)])
        assert len(rows) == 992 and len(set(rows.tolist())) == 992  # 62 full batches, no row twice

    def padded_width(source):  # what a model trimming shared padding computes over: the batch maximum
        return sum(int(lengths[b["x"]].max()) for b in source.batches(0))

    assert padded_width(bucketed) < 0.75 * padded_width(plain)
    # batches of a bucketed epoch come from all over the shuffled order, not longest-last
    maxima = [int(lengths[b["x"]].max()) for b in bucketed.batches(0)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    # still a pure function of (seed, epoch, index): resuming mid-epoch reads the same batches
    again = TensorBatchSource(tensors, batch_size=16, seed=3, lengths=lengths, bucket_batches=8)
    assert torch.equal(next(iter(again.batches(1, start=5)))["x"], list(bucketed.batches(1))[5]["x"])
    with pytest.raises(ValueError, match="lengths"):
        TensorBatchSource(tensors, batch_size=16, bucket_batches=8)
    with pytest.raises(ValueError, match="lengths must have shape"):
        TensorBatchSource(tensors, batch_size=16, lengths=lengths[:10], bucket_batches=8)


def test_shared_tensors_go_whole_to_every_rank():
    # K = B = 4 negatives: a shape test could not tell them from a batch dimension, the key does
    batch = {"x": torch.arange(8).view(4, 2), "negatives": torch.tensor([9, 8, 7, 6])}
    parts = [shard(batch, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert all(torch.equal(p["negatives"], batch["negatives"]) for p in parts)
    assert shard(batch, 0, 2, shared=frozenset())["negatives"].tolist() == [9, 8]  # not shared: sliced
    with pytest.raises(ValueError, match="same first dimension.*shared by the whole batch.*negatives"):
        shard({"x": torch.zeros(4, 2), "extra": torch.zeros(3)}, 0, 2)
    with pytest.raises(ValueError, match="at least one per-example tensor"):
        shard({"negatives": torch.zeros(3)}, 0, 2)
