"""Pattern expansion and range expressions (pure functions)."""
import pytest

from spaces import expr, patterns
from trainer.model_config import ModelConfig


def test_loop_middle_matches_issue_example():
    assert patterns.loop_middle(11, 4, 5, 2) == (0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10)


def test_loop_middle_three_passes_keeps_entry_and_exit_blocks():
    order = patterns.loop_middle(6, 1, 4, 3)
    assert len(order) == 14 and order[0] == 0 and order[-1] == 5
    assert order.count(1) == 3 and order.count(0) == 1


def test_cycle_and_none():
    assert patterns.cycle(3, 3) == (0, 1, 2) * 3
    assert patterns.none(4) == (0, 1, 2, 3)


def test_tie_tail_with_and_without_exit_block():
    assert patterns.tie_tail(11, 5, 1) == tuple(range(9)) + (9,) * 5 + (10,)
    assert patterns.tie_tail(4, 3) == (0, 1, 2, 3, 3, 3)


@pytest.mark.parametrize(
    "family,n,params,param",
    [
        ("loop_middle", 3, {"start": 1, "end": 5, "repeats": 2}, "end"),
        ("loop_middle", 3, {"start": 3, "end": 3, "repeats": 2}, "start"),
        ("cycle", 3, {"repeats": 1}, "repeats"),
        ("tie_tail", 3, {"repeats": 2, "exit_blocks": 3}, "exit_blocks"),
    ],
)
def test_invalid_parameters_name_the_parameter(family, n, params, param):
    with pytest.raises(patterns.PatternError, match=f"^{param} "):
        patterns.expand(family, n, params)


def test_explicit_rejects_gaps():
    with pytest.raises(patterns.PatternError, match=r"never runs blocks \[2\]"):
        patterns.explicit([0, 1, 3])


@pytest.mark.parametrize("n", [2, 5, 11])
def test_every_expansion_is_a_valid_model_schedule(n):
    orders = [patterns.none(n), patterns.cycle(n, 2), patterns.loop_middle(n, 0, n - 1, 2), patterns.tie_tail(n, 3, n - 1)]
    for order in orders:
        ModelConfig(unique_blocks=n, virtual_layers=order).validate()


def test_has_repeats():
    assert patterns.has_repeats((0, 1, 0)) and not patterns.has_repeats((0, 1, 2))


def test_expressions():
    assert expr.evaluate("min(n - 2, start + 3)", {"n": 11, "start": 4}) == 7
    assert expr.evaluate("12 // n", {"n": 5}) == 2
    assert expr.names_used("max(n, start) - 1") == {"n", "start"}
    with pytest.raises(expr.ExprError, match="only integers"):
        expr.evaluate("__import__('os')", {"n": 1})
    with pytest.raises(expr.ExprError, match="uses 'end'"):
        expr.evaluate("end + 1", {"n": 3})
