"""Knobs: any RunConfig key (`model.*`, `train.*`, `export.*`) searched over a list or a range, parsed once.

A knob's choices are what Optuna sees (its labels) and what the config gets (its values): the same for numbers,
strings and booleans; a list value (e.g. `model.value_embed_layers: [[], [9, 10]]`) is labelled by its JSON text;
an integer choice may be an expression over `n` (unique blocks) and `depth` (virtual layers), labelled by its text
and evaluated per point, like the bounds of an integer range.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable, Union, get_args, get_origin

from spaces import expr
from spaces.choices import Categorical, FloatRange, IntRange, Options
from trainer.model_config import type_hints
from trainer.run_config import SECTIONS

# Names an integer knob's expressions may use.
KNOB_NAMES = ("n", "depth")
SPEC_KEYS = ("choices", "min", "max", "step", "when")


class KnobError(ValueError):
    """A knob is malformed; args are (key, problem, fix) for the space's error line."""


@dataclass(frozen=True)
class Expr:
    """An integer choice written as an expression over n and depth."""

    source: str

    def evaluate(self, env: dict[str, int]) -> int:
        return expr.evaluate(self.source, env)


@dataclass(frozen=True)
class Knob:
    """One searched RunConfig key: its choices (labels and values) or its range, and when it is asked."""

    section: str
    key: str
    labels: tuple = ()  # a choice list: what Optuna sees
    values: tuple = ()  # ... and the config value of each (an Expr is evaluated per point)
    lo: Any = None  # a range: int bounds (or expressions) or float bounds with a step
    hi: Any = None
    step: float | None = None
    when: tuple[tuple[str, tuple], ...] = ()  # ((section.key, values it must have), ...): asked only then

    @property
    def name(self) -> str:
        """The Optuna parameter name: section.key."""
        return f"{self.section}.{self.key}"

    def options(self, env: dict[str, int]) -> Options:
        """The choices at a point with these n and depth."""
        if self.labels:
            return Categorical(self.labels)
        if self.step is not None:
            return FloatRange(self.lo, self.hi, self.step)
        return IntRange(expr.evaluate(self.lo, env), expr.evaluate(self.hi, env))

    def value(self, label: Any, env: dict[str, int]) -> Any:
        """The config value of a chosen label."""
        if not self.labels:
            return label
        value = self.values[self.labels.index(label)]
        return value.evaluate(env) if isinstance(value, Expr) else value

    def asked(self, current: Callable[[str, str], Any]) -> bool:
        """Whether every `when` condition holds; current(section, key) is the value so far."""
        return all(current(*key.split(".", 1)) in allowed for key, allowed in self.when)

    def describe(self) -> str:
        """The choices as `spaces show` prints them."""
        if self.labels:
            text = str(list(self.labels))
        else:
            text = f"{self.lo}..{self.hi}" + (f" step {self.step:g}" if self.step is not None else "")
        conditions = ", ".join(f"{key} in {list(allowed)}" for key, allowed in self.when)
        return text + (f" (when {conditions})" if conditions else "")


def field_hint(section: str, key: str) -> Any:
    """The type annotation of a RunConfig field; KnobError if there is no such section or key."""
    if section not in SECTIONS:
        raise KnobError(f"{section}.{key}", f"unknown section '{section}'",
                        f"write section.key with a section of {sorted(SECTIONS)}")
    cls = SECTIONS[section]
    if key not in {f.name for f in fields(cls)}:
        raise KnobError(f"{section}.{key}", f"{cls.__name__} has no key '{key}'",
                        f"use one of {sorted(f.name for f in fields(cls))}")
    return type_hints(cls)[key]


def parse_knobs(raw: Any) -> tuple[Knob, ...]:
    """Knobs from the `knobs:` mapping, in file order; KnobError(key, problem, fix) on the first bad one."""
    if not isinstance(raw, dict) or not raw:
        raise KnobError("knobs", "must be a non-empty mapping of section.key -> choices",
                        "write e.g. knobs: {model.xsa_last: [0, 4], train.matrix_lr: {min: 0.02, max: 0.04, step: 0.01}}")
    knobs: list[Knob] = []
    for name, spec in raw.items():
        if not isinstance(name, str) or name.count(".") != 1:
            raise KnobError(f"knobs.{name}", "is not section.key", "write e.g. model.xsa_last or train.matrix_lr")
        section, key = name.split(".")
        hint = field_hint(section, key)
        where = f"knobs.{name}"
        when = ()
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(SPEC_KEYS))
            if unknown:
                raise KnobError(where, f"unknown key(s) {unknown}",
                                "write a list, {min, max} (+ step for floats), or {choices: [...], when: {...}}")
            later = [k for k in list(raw)[len(knobs):] if k != name]
            when = _parse_when(spec.get("when"), f"{where}.when", later, name)
            spec = {k: v for k, v in spec.items() if k != "when"}
            if "choices" in spec:
                if len(spec) > 1:
                    raise KnobError(where, "has both choices and a range", "give one of them")
                spec = spec["choices"]
        knobs.append(_parse_spec(section, key, hint, spec, where, when))
    return tuple(knobs)


def _parse_spec(section: str, key: str, hint: Any, spec: Any, where: str, when: tuple) -> Knob:
    if isinstance(spec, dict):
        return _parse_range(section, key, hint, spec, where, when)
    items = _items(spec, hint)
    if not items:
        raise KnobError(where, "is an empty choice list", "give at least one value, or delete the knob")
    labels, values = [], []
    for item in items:
        value = _typed(item, hint, where, expressions=True)
        labels.append(value.source if isinstance(value, Expr) else _label(value))
        values.append(value)
    if len(set(map(repr, labels))) != len(labels):
        raise KnobError(where, f"{[*items]} repeats a value", "list each choice once")
    return Knob(section, key, labels=tuple(labels), values=tuple(values), when=when)


def _parse_range(section: str, key: str, hint: Any, spec: dict, where: str, when: tuple) -> Knob:
    if hint is int:
        if set(spec) != {"min", "max"}:
            raise KnobError(where, f"integer range has keys {sorted(spec)}",
                            "write {min: LO, max: HI}; bounds may use n and depth, e.g. {min: 0, max: depth}")
        for bound in ("min", "max"):
            _typed(spec[bound], int, f"{where}.{bound}", expressions=True)
        lo, hi = spec["min"], spec["max"]
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            raise KnobError(where, f"range {lo}..{hi} is empty", "write min <= max")
        return Knob(section, key, lo=lo, hi=hi, when=when)
    if hint is float:
        if set(spec) != {"min", "max", "step"}:
            raise KnobError(where, f"float range has keys {sorted(spec)}",
                            "write {min: LO, max: HI, step: S} (floats need a step), or a list of values")
        lo, hi, step = (_typed(spec[b], float, f"{where}.{b}") for b in ("min", "max", "step"))
        count = (hi - lo) / step if step > 0 else -1
        if step <= 0 or hi < lo or abs(count - round(count)) > 1e-9:
            raise KnobError(where, f"min {lo:g}, max {hi:g}, step {step:g} do not make a grid",
                            "use step > 0 and max = min + a whole number of steps")
        return Knob(section, key, lo=lo, hi=hi, step=step, when=when)
    raise KnobError(where, "a range is for integer and float keys", "give a list of values")


def _parse_when(raw: Any, where: str, later: list[str], own: str) -> tuple[tuple[str, tuple], ...]:
    """Conditions on keys decided before this knob: axes, base values, defaults and knobs listed above it."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise KnobError(where, "must map section.key to the values it must have",
                        "write e.g. when: {export.upgrade_bits: [6]}")
    conditions = []
    for name, allowed in raw.items():
        if not isinstance(name, str) or name.count(".") != 1:
            raise KnobError(f"{where}.{name}", "is not section.key", "write e.g. export.quant_bits")
        if name == own or name in later:
            raise KnobError(f"{where}.{name}", "is decided later than this knob",
                            "condition only on axes, base keys and knobs listed above this one")
        section, key = name.split(".")
        hint = field_hint(section, key)
        typed = tuple(_typed(v, hint, f"{where}.{name}") for v in _items(allowed, hint))
        if not typed:
            raise KnobError(f"{where}.{name}", "is an empty list", "list the values that ask this knob")
        conditions.append((name, typed))
    return tuple(conditions)


def _items(spec: Any, hint: Any) -> list:
    """The values a choice list holds: a list is the choices, except for a list-valued key, whose choices are a
    list of lists (a single list, e.g. [9, 10], is one choice); anything else is one choice."""
    if _is_list_of_lists(spec) or (isinstance(spec, list) and not _is_int_list_hint(hint)):
        return list(spec)
    return [spec]


def _is_int_list_hint(hint: Any) -> bool:
    """A tuple[int, ...] field, or a union with one (its value is itself a list)."""
    if get_origin(hint) is tuple:
        return True
    return get_origin(hint) is Union and any(get_origin(a) is tuple for a in get_args(hint))


def _is_list_of_lists(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)


def _label(value: Any) -> Any:
    """What Optuna sees for a config value: the value, or a list's JSON text."""
    return json.dumps(list(value)) if isinstance(value, tuple) else value


def _typed(value: Any, hint: Any, where: str, expressions: bool = False) -> Any:
    """value as the field's type (strictly: no strings for numbers), an Expr for an integer expression."""
    if get_origin(hint) is Union:
        for option in get_args(hint):
            try:
                return _typed(value, option, where)
            except KnobError:
                continue
        raise KnobError(where, f"{value!r} is not a valid value", f"use one of the types {_type_names(hint)}")
    if get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise KnobError(where, f"{value!r} is not a list of integers", "write e.g. [9, 10] (or [] for none)")
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is int and expressions and isinstance(value, str):
        used = expr.names_used(value) - set(KNOB_NAMES)
        if used:
            raise KnobError(where, f"{value!r} uses {sorted(used)}", f"integer choices may only use {list(KNOB_NAMES)}")
        try:
            expr.evaluate(value, dict.fromkeys(KNOB_NAMES, 1))
        except expr.ExprError as exc:
            raise KnobError(where, str(exc), "write an integer or e.g. 'depth' or 'min(4, depth)'") from None
        return Expr(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise KnobError(where, f"{value!r} is not a valid {_type_names(hint)}",
                    f"write a {_type_names(hint)}" + (" or an expression in n and depth" if hint is int and expressions else ""))


def _type_names(hint: Any) -> str:
    if get_origin(hint) is Union:
        return " or ".join(_type_names(a) for a in get_args(hint))
    if get_origin(hint) is tuple:
        return "list of integers"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(hint, str(hint))
