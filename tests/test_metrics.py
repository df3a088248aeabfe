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
    # scikit-learn's default labels: those present in the truth or the predictions
    assert m["f1_macro"] == skm.f1_score(y, p, average="macro", zero_division=0)
    assert m["f1_weighted"] == skm.f1_score(y, p, average="weighted", zero_division=0)
    assert m["precision_macro"] == skm.precision_score(y, p, average="macro", zero_division=0)
    assert m["recall_weighted"] == skm.recall_score(y, p, average="weighted", zero_division=0)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p, labels=list(range(k))).tolist()


def test_known_values():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], labels=["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert abs(m["f1"] - 0.8) < 1e-12


def test_a_class_absent_from_truth_and_predictions_is_not_scored_zero():
    # a perfect classifier on a one-class eval set of a two-class model: macro F1 1.0 (it was 0.5)
    m = classification_metrics([1, 1, 1], [1, 1, 1], labels=["neg", "pos"])
    assert m["f1_macro"] == 1.0 == skm.f1_score([1, 1, 1], [1, 1, 1], average="macro")
    assert m["absent_labels"] == ["neg"] and m["confusion_matrix"] == [[0, 0], [0, 3]]
    # five classes, one (4) in neither: scikit-learn's default, 0.2847 here (0.2278 with the absent class as 0)
    y = [0, 0, 1, 1, 2, 2, 3, 3, 0, 1]
    p = [0, 1, 1, 2, 2, 3, 3, 0, 1, 1]
    m = classification_metrics(y, p, labels=list("abcde"))
    assert m["f1_macro"] == skm.f1_score(y, p, average="macro", zero_division=0)
    assert m["f1_macro"] > skm.f1_score(y, p, labels=[0, 1, 2, 3, 4], average="macro", zero_division=0)
    assert m["absent_labels"] == ["e"] and len(m["confusion_matrix"]) == 5
