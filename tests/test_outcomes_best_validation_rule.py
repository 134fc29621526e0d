"""One best-validation rule (``Monitor``) for the epochs of a training, the tune candidates and the
tune table: L1 ``Loss`` and ``MAE`` lower is better, any other KeyEval higher; better by more than
1e-6 or it is a tie, and a tie keeps the earlier; NaN never wins."""
from __future__ import annotations

import math

import pandas as pd

from khar_mmsa.tuning.table import best_valid
from khar_mmsa.training.loop import MIN_DELTA, Monitor


def test_the_rule_picks_the_first_best_by_more_than_min_delta_for_every_key_eval() -> None:
    assert MIN_DELTA == 1e-6
    loss = Monitor.for_key("Loss")
    assert loss.lower_is_better and Monitor.for_key("MAE").lower_is_better
    assert not Monitor.for_key("Has0_acc_2").lower_is_better
    assert loss.best_index([0.7, 0.5, 0.5 - 5e-7, 0.6]) == 1            # a tie within 1e-6: the earlier
    assert loss.best_index([0.7, 0.5, 0.5 - 2e-6, 0.6]) == 2            # better by more: the later
    assert loss.best_index([math.nan, 0.9, math.inf]) == 1 and loss.best_index([math.nan]) is None
    assert Monitor.for_key("Corr").best_index([0.1, 0.3, 0.3 + 5e-7, 0.2]) == 1


def test_the_tune_table_best_is_the_rules_row_not_the_plain_minimum(tmp_path) -> None:
    """The tune search copies a candidate's checkpoint when the rule says it improves; the table's
    best (what a resumed search compares with) is the same row's value."""
    table = pd.DataFrame({"candidate": ["a", "b", "c"], "Valid_Loss": [0.7, 0.5, 0.5 - 5e-7]})
    assert best_valid(table, "Loss") == 0.5
    table = pd.DataFrame({"candidate": ["a", "b"], "Valid_Corr": [0.3, 0.3 + 5e-7]})
    assert best_valid(table, "Corr") == 0.3
