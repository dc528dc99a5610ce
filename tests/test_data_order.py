from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from care.train.data_order import batch_ids, cursor_after


@given(n=st.integers(1, 40), bs=st.integers(1, 9), seed=st.integers(0, 5))
def test_each_epoch_visits_every_sample_once(n, bs, seed):
    ids = [f"s{i}" for i in range(n)]
    drawn = [x for b in range(n) for x in batch_ids(ids, batch_size=bs, index=b, seed=seed)]
    # n batches of bs samples = bs full epochs, each a permutation of all ids
    for e in range(bs):
        assert sorted(drawn[e * n : (e + 1) * n]) == sorted(ids)


def test_deterministic_and_seed_dependent():
    ids = [f"s{i}" for i in range(50)]
    assert batch_ids(ids, batch_size=4, index=3, seed=0) == batch_ids(ids, batch_size=4, index=3, seed=0)
    assert batch_ids(ids, batch_size=4, index=3, seed=0) != batch_ids(ids, batch_size=4, index=3, seed=1)


def test_cursor():
    assert cursor_after(10, batch_size=4, index=0).as_dict() == {"epoch": 0, "offset": 4}
    assert cursor_after(10, batch_size=4, index=2).as_dict() == {"epoch": 1, "offset": 2}
