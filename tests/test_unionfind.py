import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fxsurgeon.channels.unionfind import UnionFind


@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), max_size=12),
                         max_size=5))))
def test_vectorised_union_find_matches_a_naive_one(case):
    n, batches = case
    uf = UnionFind()
    assert uf.new(n).tolist() == list(range(1, n + 1))
    label = list(range(n + 1))                     # naive: relabel whole sets
    for batch in batches:
        if batch:
            a, b = np.array(batch).T
            uf.union(a, b)
            for x, y in batch:
                lx, ly = label[x], label[y]
                label = [ly if v == lx else v for v in label]
        if len(batches) % 2:
            uf.compress()
    roots = uf.find(np.arange(1, n + 1))
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            assert (roots[i - 1] == roots[j - 1]) == (label[i] == label[j])
    assert uf.find(np.array([0]))[0] == 0
