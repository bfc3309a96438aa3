"""Tiny integer expressions for conditional range bounds in a space file, e.g. `n - 2` or `min(n - 1, start + 3)`."""
from __future__ import annotations

import ast
import functools
import operator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_FUNCS = {"min": min, "max": max}


class ExprError(ValueError):
    """An expression uses something other than integers, names, + - * //, min() and max()."""


def evaluate(source: int | str, names: dict[str, int]) -> int:
    """Evaluate an integer or an expression over `names` (n and earlier parameters)."""
    if isinstance(source, bool):
        raise ExprError(f"{source!r} is not an integer or expression")
    if isinstance(source, int):
        return source
    if not isinstance(source, str):
        raise ExprError(f"{source!r} is not an integer or expression")
    return _eval(_parsed(source), names, source)


@functools.lru_cache(maxsize=1024)
def _parsed(source: str) -> ast.AST:
    """The expression's syntax tree (cached: a space's walk evaluates the same few bounds at every point)."""
    try:
        return ast.parse(source, mode="eval").body
    except SyntaxError:
        raise ExprError(f"cannot parse {source!r}; write e.g. 'n - 2' or 'min(n - 1, start + 3)'") from None


def names_used(source: int | str) -> set[str]:
    """Names an expression refers to (empty for a plain integer)."""
    if not isinstance(source, str):
        return set()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id not in _FUNCS}


def _eval(node: ast.AST, names: dict[str, int], source: str) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ExprError(f"{source!r} uses '{node.id}'; available here: {sorted(names)}")
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, names, source)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_eval(node.left, names, source), _eval(node.right, names, source))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*(_eval(a, names, source) for a in node.args))
    raise ExprError(f"{source!r}: only integers, names, + - * //, min() and max() are allowed")
