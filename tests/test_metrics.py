import math

from realm.app.retrieval_metrics import evaluate


def test_metrics_follow_trec_eval_definitions() -> None:
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "b": 1.0}, "q2": {"y": 1.0}}
    metrics = evaluate(qrels, run)
    # trec_eval's ndcg_cut uses the grade itself as the gain (not 2^grade - 1).
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    actual = 2 / math.log2(3) + 1 / math.log2(4)
    assert math.isclose(metrics["ndcg@10"], (actual / ideal + 0.0) / 2, rel_tol=1e-9)
    assert math.isclose(metrics["recall@100"], (1.0 + 0.0) / 2)
    assert math.isclose(metrics["mrr@10"], (1 / 2 + 0.0) / 2)
    assert metrics["queries"] == 2


def test_a_judged_query_missing_from_the_run_counts_as_zero() -> None:
    metrics = evaluate({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}})
    assert metrics["mrr@10"] == 0.5
    assert metrics["queries"] == 2


def test_mrr_is_cut_at_ten() -> None:
    run = {"q1": {f"d{i}": 100.0 - i for i in range(20)}}
    metrics = evaluate({"q1": {"d15": 1}}, run)
    assert metrics["mrr@10"] == 0.0
    assert metrics["recall@100"] == 1.0
