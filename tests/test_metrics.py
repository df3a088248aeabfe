import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from lmforge.metrics import classification_metrics


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60))))
def test_equal_to_scikit_learn(data):
    k, pairs = data
    y, p = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    m = classification_metrics(y, p, labels=[str(i) for i in range(k)])
    assert m["accuracy"] == skm.accuracy_score(y, p)
    assert m["mcc"] == skm.matthews_corrcoef(y, p)
    assert m["f1_macro"] == skm.f1_score(y, p, labels=list(range(k)), average="macro", zero_division=0)
    assert m["f1_weighted"] == skm.f1_score(y, p, labels=list(range(k)), average="weighted", zero_division=0)
    assert m["precision_macro"] == skm.precision_score(y, p, labels=list(range(k)), average="macro", zero_division=0)
    assert m["recall_weighted"] == skm.recall_score(y, p, labels=list(range(k)), average="weighted", zero_division=0)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p, labels=list(range(k))).tolist()


def test_known_values():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], labels=["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert abs(m["f1"] - 0.8) < 1e-12
