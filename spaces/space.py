"""A declarative search space (YAML) over recurrence configurations, validated once at load.

One walk over the space's decisions serves everything: optuna's define-by-run `suggest`, full
enumeration (`configs`), random `sample` and rebuilding a config from an assignment (`build`).
"""
from __future__ import annotations

import copy
import functools
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from trainer.model_config import EMBEDDING_BITS, QUANT_BITS, ConfigError, ExportConfig

from trainer.run_config import SECTIONS, RunConfig, from_dict

from spaces import expr, patterns
from spaces.choices import Categorical, FloatRange, IntRange, Options
from spaces.knobs import Expr, Knob, KnobError, parse_knobs
from trainer.sizing.size_model import SizePrediction, predict

# Axes a space file may list (each a choice list); unique_blocks and patterns are required, the rest optional.
AXES = ("unique_blocks", "untie_mlp", "width", "mlp_mult", "depth_signal", "quant_bits", "embedding_bits")
TOP_KEYS = ("name", "description", "base", "patterns", "head_dim", "kv_ratio", "knobs") + AXES
# Axes chosen per config, and the RunConfig keys each one sets (base must leave those alone).
AXIS_KEYS = {
    "untie_mlp": ("model", "untie_mlp"),
    "mlp_mult": ("model", "mlp_mult"),
    "depth_signal": ("model", "depth_signal"),
    "quant_bits": ("export", "quant_bits"),
    "embedding_bits": ("export", "embedding_bits"),
}
PATTERN_KEYS = (("model", "unique_blocks"), ("model", "virtual_layers"))
WIDTH_KEYS = (("model", "model_dim"), ("model", "num_heads"), ("model", "num_kv_heads"))


class SpaceError(ConfigError):
    """A space file is malformed; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ParamSpec:
    """One pattern parameter: a list of choices, or a range whose bounds may be expressions in n and earlier params."""

    name: str
    choices: tuple[int, ...] | None = None
    lo: int | str | None = None
    hi: int | str | None = None

    def options(self, env: dict[str, int]) -> Categorical | IntRange:
        """The concrete choices given n and the parameters chosen before this one."""
        if self.choices is not None:
            return Categorical(self.choices)
        return IntRange(expr.evaluate(self.lo, env), expr.evaluate(self.hi, env))


@dataclass(frozen=True)
class PatternSpec:
    """One repeat-pattern family with its parameters; `unique_blocks` None means the space-wide choices."""

    family: str
    unique_blocks: tuple[int, ...] | None = None
    params: tuple[ParamSpec, ...] = ()
    orders: tuple[tuple[int, ...], ...] = ()  # explicit family only

    @property
    def blocks_param(self) -> str:
        """Optuna name of the block-count choice: shared unless this family restricts it."""
        return "unique_blocks" if self.unique_blocks is None else f"{self.family}.unique_blocks"


@dataclass(frozen=True)
class Width:
    """model_dim with its head layout."""

    model_dim: int
    num_heads: int
    num_kv_heads: int

    @property
    def label(self) -> str:
        return f"d{self.model_dim}_h{self.num_heads}_kv{self.num_kv_heads}"


Pick = Callable[[str, Options], Any]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: base settings plus the axes searched over."""

    path: str
    base: dict
    unique_blocks: tuple[int, ...]
    patterns: tuple[PatternSpec, ...]
    untie_mlp: tuple[str, ...] | None = None
    widths: tuple[Width, ...] | None = None
    mlp_mult: tuple[float, ...] | None = None
    depth_signal: tuple[str, ...] | None = None
    quant_bits: tuple[int, ...] | None = None
    embedding_bits: tuple[int, ...] | None = None
    head_dim: int = 64  # derives heads of plain-int widths
    kv_ratio: int = 2
    knobs: tuple[Knob, ...] = ()  # any other RunConfig keys searched, decided last in file order
    name: str = ""
    description: str = ""
    code_bytes: int | None = field(default=None, compare=False)  # None: read the trainer sources on disk

    # ---- the one walk over decisions ------------------------------------------------------------
    def _assign(self, pick: Pick) -> dict[str, Any]:
        """Make every decision through `pick`, in dependency order; returns the assignment."""
        a: dict[str, Any] = {}

        def choose(name: str, options: Options) -> Any:
            a[name] = pick(name, options)
            return a[name]

        family = choose("pattern", Categorical(tuple(p.family for p in self.patterns)))
        spec = self._pattern(family)
        if family == "explicit":
            choose("explicit.order", Categorical(tuple(_order_label(o) for o in spec.orders)))
        else:
            env = {"n": choose(spec.blocks_param, Categorical(spec.unique_blocks or self.unique_blocks))}
            for param in spec.params:
                env[param.name] = choose(f"{family}.{param.name}", param.options(env))
        # Untying MLPs only changes anything when some block runs twice.
        if self.untie_mlp and patterns.has_repeats(self._order(a)[1]):
            choose("untie_mlp", Categorical(self.untie_mlp))
        if self.widths:
            choose("width", Categorical(tuple(w.label for w in self.widths)))
        for axis in ("mlp_mult", "depth_signal", "quant_bits"):
            if getattr(self, axis):
                choose(axis, Categorical(getattr(self, axis)))
        embedding = self._embedding_choice(a)
        if embedding:
            choose(*embedding)
        if self.knobs:
            n, order = self._order(a)
            env = {"n": n, "depth": len(order)}
            decided: dict[tuple[str, str], Any] = {}  # built at the first `when`, then kept up to date

            def so_far(section: str, key: str) -> Any:
                """section.key once the decisions so far are made: a choice, else base, else the default."""
                if not decided:
                    decided.update(self._decided(a))
                if (section, key) in decided:
                    return decided[(section, key)]
                return _base_or_default(self.base, section, key)

            for knob in self.knobs:
                if knob.asked(so_far):
                    value = knob.value(choose(knob.name, knob.options(env)), env)
                    if decided:  # else the first `when` builds it from `a`, this choice included
                        decided[(knob.section, knob.key)] = value
        return a

    def _decided(self, a: dict[str, Any]) -> dict[tuple[str, str], Any]:
        """{(section, key): value} of every decision in assignment a (patterns, axes and knobs)."""
        n, order = self._order(a)
        values: dict[tuple[str, str], Any] = {
            ("model", "unique_blocks"): n, ("model", "virtual_layers"): () if order == tuple(range(n)) else order}
        if "width" in a:
            w = next(w for w in self.widths if w.label == a["width"])
            values.update({k: getattr(w, k[1]) for k in WIDTH_KEYS})
        for axis, keys in AXIS_KEYS.items():
            name = self._param_name(axis, a)
            if name in a:
                values[keys] = patterns.untie_value(a[name], order) if axis == "untie_mlp" else a[name]
        env = {"n": n, "depth": len(order)}
        for knob in self.knobs:
            if knob.name in a:
                values[(knob.section, knob.key)] = knob.value(a[knob.name], env)
        return values

    def _embedding_choice(self, a: dict[str, Any]) -> tuple[str, Categorical] | None:
        """The embedding widths offered with the chosen quant_bits, under their Optuna name; None if none is.

        Only widths above the matrices' bits (and 0, the same): the tied embedding is also the output head, and
        its rounding was most of the int6 round trip's cost (BENCHMARKS.md, "Exports"), so a narrower one is never
        worth its bytes.
        A quant_bits that leaves fewer widths gets its own name: an Optuna parameter keeps one set of choices.
        """
        if not self.embedding_bits:
            return None
        quant = a.get("quant_bits", (self.base.get("export") or {}).get("quant_bits", ExportConfig.quant_bits))
        options = tuple(b for b in self.embedding_bits if b == 0 or b > quant)
        if not options:
            return None
        name = "embedding_bits" if options == self.embedding_bits else f"embedding_bits.q{quant}"
        return name, Categorical(options)

    def _param_name(self, axis: str, a: dict[str, Any]) -> str:
        """The Optuna name an axis was chosen under in assignment a."""
        if axis == "embedding_bits":
            embedding = self._embedding_choice(a)
            return embedding[0] if embedding else axis
        return axis

    def _pattern(self, family: str) -> PatternSpec:
        return next(p for p in self.patterns if p.family == family)

    def _order(self, a: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
        """(unique_blocks, virtual-layer order) of an assignment."""
        family = a["pattern"]
        if family == "explicit":
            order = tuple(int(b) for b in a["explicit.order"].split(","))
            return patterns.blocks_of_explicit(order), order
        spec = self._pattern(family)
        n = a[spec.blocks_param]
        params = {p.name: a[f"{family}.{p.name}"] for p in spec.params}
        return n, patterns.expand(family, n, params)

    def build(self, assignment: dict[str, Any]) -> RunConfig:
        """The validated RunConfig of an assignment (as produced by configs() or an optuna trial's params)."""
        def lookup(name: str, options: Options) -> Any:
            if name not in assignment:
                raise SpaceError(f"{self.path}: assignment lacks '{name}'; choose one of {_describe(options)}")
            value = options.canonical(assignment[name])
            if value is None:
                raise SpaceError(f"{self.path}: {name}={assignment[name]!r} is not a choice here; choose one of {_describe(options)}")
            return value

        a = self._assign(lookup)
        extra = sorted(set(assignment) - set(a))
        if extra:
            raise SpaceError(f"{self.path}: assignment has keys {extra} that this branch does not use; drop them")
        data = copy.deepcopy(self.base)
        for (section, key), value in self._decided(a).items():
            data.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
        try:
            return from_dict(data, where=f"{self.path} at {a}")
        except ConfigError as exc:
            if not self.knobs:
                raise
            raise SpaceError(f"{exc}; fix: bound the knobs by n and depth (e.g. {{min: 0, max: depth}}) or "
                             "ask a knob only `when` the keys it needs allow it") from None

    # ---- the API the search uses ----------------------------------------------------------------
    def suggest(self, trial: Any, require_fit: bool = True) -> RunConfig:
        """Define-by-run suggestion on an optuna trial; prunes (optuna.TrialPruned) configs predicted over the limit."""
        def ask(name: str, options: Options) -> Any:
            if isinstance(options, IntRange):
                return trial.suggest_int(name, options.lo, options.hi)
            if isinstance(options, FloatRange):
                return options.canonical(trial.suggest_float(name, options.lo, options.hi, step=options.step))
            return trial.suggest_categorical(name, list(options.values))

        cfg = self.build(self._assign(ask))
        prediction = self.predict(cfg)
        trial.set_user_attr("predicted_artifact_bytes", prediction.predicted_artifact_bytes)
        trial.set_user_attr("size_margin_bytes", prediction.margin_bytes)
        if require_fit and not prediction.fits:
            import optuna

            raise optuna.TrialPruned(f"over the size limit: {prediction.describe()}")
        return cfg

    def assignments(self, only: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every assignment, depth-first: replay the walk, advancing the last decision with choices left.

        `only` ({param: value}) keeps the branches where those params, when asked, have those values."""
        path: list[int] = []
        while True:
            sizes: list[int] = []

            def replay(name: str, options: Options) -> Any:
                depth = len(sizes)
                values = options.values
                if only and name in only:
                    values = tuple(v for v in values if v == only[name])
                sizes.append(len(values))
                if not values:
                    raise _DeadEnd
                if depth == len(path):
                    path.append(0)
                return values[path[depth]]

            try:
                yield self._assign(replay)
            except _DeadEnd:
                pass  # this branch has no value left for some param: move on to the next one
            del path[len(sizes):]
            while path and path[-1] + 1 >= sizes[len(path) - 1]:
                path.pop()
            if not path:
                return
            path[-1] += 1

    def assignment_for(self, cfg: RunConfig) -> dict[str, Any] | None:
        """An assignment that builds cfg's model and export sections and the train keys knobs search (a known
        scheme as a point), or None."""
        width = Width(cfg.model.model_dim, cfg.model.num_heads, cfg.model.num_kv_heads).label
        wanted = {"width": width, **{axis: getattr(getattr(cfg, section), key)
                                     for axis, (section, key) in AXIS_KEYS.items() if axis != "untie_mlp"}}
        # Knob labels that stand for one value whatever the point (no n/depth expression).
        for knob in self.knobs:
            fixed = [(label, value) for label, value in zip(knob.labels, knob.values) if not isinstance(value, Expr)]
            if knob.labels and len(fixed) == len(knob.labels):
                wanted[knob.name] = next((label for label, value in fixed
                                          if value == getattr(getattr(cfg, knob.section), knob.key)), None)
        train_keys = [k.key for k in self.knobs if k.section == "train"]
        # Only the branches that agree on those values; build only their assignments.
        for a in self.assignments(only=wanted):
            built = self.build(a)
            if (built.model == cfg.model and built.export == cfg.export
                    and all(getattr(built.train, k) == getattr(cfg.train, k) for k in train_keys)):
                return a
        return None

    def configs(self) -> Iterator[tuple[dict[str, Any], RunConfig]]:
        """Every point of the space as (assignment, config), whether or not it fits."""
        for a in self.assignments():
            yield a, self.build(a)

    def orders(self) -> set[tuple[int, tuple[int, ...]]]:
        """Every distinct (unique_blocks, virtual-layer order) of the space's points (the patterns' alone)."""
        return set(_pattern_orders(self))

    def size(self) -> int:
        """Number of points in the space."""
        return sum(1 for _ in self.assignments())

    def predict(self, cfg: RunConfig) -> SizePrediction:
        """Size prediction with this space's code-byte figure."""
        return predict(cfg, code_bytes=self.code_bytes)

    def sample(self, n: int, seed: int = 0) -> list[RunConfig]:
        """Up to n distinct configs predicted to fit, uniform over the space's points (fewer if it has fewer)."""
        # Uniform over points rather than random walks: a walk would give a one-point family (an
        # explicit order) as much weight as a family with hundreds of points.
        points = list(self.assignments())
        random.Random(seed).shuffle(points)
        found: dict[RunConfig, None] = {}
        for assignment in points:
            if len(found) >= n:
                break
            cfg = self.build(assignment)
            if cfg not in found and self.predict(cfg).fits:
                found[cfg] = None
        return list(found)

    # ---- derived spaces ---------------------------------------------------------------------------
    def with_base(self, overrides: dict) -> "SearchSpace":
        """A copy with `overrides` ({section: {key: value}}) merged into base, re-validated."""
        merged = copy.deepcopy(self.base)
        for section, values in overrides.items():
            merged.setdefault(section, {}).update(values)
        return _validated(replace(self, base=merged))

    def with_axes(self, **axes: Any) -> "SearchSpace":
        """A copy with some axes' choice lists replaced (same YAML syntax, e.g. width=[{...}]), re-validated."""
        raw = {}
        for key, value in axes.items():
            if key not in AXES:
                raise SpaceError(f"with_axes: unknown axis '{key}'; use one of {list(AXES)}")
            raw[key] = value
        changes = _parse_axes(raw, self.path, self.head_dim, self.kv_ratio)
        return _validated(replace(self, **changes))

    def with_code_bytes(self, code_bytes: int | None) -> "SearchSpace":
        """A copy that predicts with a fixed code-byte figure (None: read the trainer sources)."""
        return replace(self, code_bytes=code_bytes)


class _DeadEnd(Exception):
    """A filtered walk reached a decision with no value left."""


def _order_label(order: tuple[int, ...]) -> str:
    return ",".join(str(b) for b in order)


def _describe(options: Options) -> str:
    if isinstance(options, FloatRange):
        return f"{options.lo:g}..{options.hi:g} in steps of {options.step:g}"
    return str(list(options.values))


def _base_or_default(base: dict, section: str, key: str) -> Any:
    """section.key as base sets it (lists as tuples), else the RunConfig default."""
    values = base.get(section) or {}
    if key in values:
        value = values[key]
        return tuple(value) if isinstance(value, list) else value
    return _default(section, key)


@functools.lru_cache(maxsize=None)
def _default(section: str, key: str) -> Any:
    return next(f.default for f in fields(SECTIONS[section]) if f.name == key)


# ---- loading and validation -----------------------------------------------------------------------
def load_space(path: Path | str, code_bytes: int | None = None) -> SearchSpace:
    """Read, parse and validate a space file; errors name the file, the key and the fix."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpaceError(f"{where}: no such space file; pass an existing .yaml path (e.g. spaces/default.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{where}: cannot parse YAML: {exc}") from None
    return parse_space(data, where, code_bytes=code_bytes)


def parse_space(data: Any, where: str = "space", code_bytes: int | None = None) -> SearchSpace:
    """Build and validate a SearchSpace from the parsed YAML mapping."""
    if not isinstance(data, dict):
        _fail(where, "(top level)", "the file must be a mapping", "start from spaces/default.yaml")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        _fail(where, unknown[0], f"unknown key(s) {unknown}", f"remove them; valid keys are {list(TOP_KEYS)}")
    for required in ("unique_blocks", "patterns"):
        if required not in data:
            _fail(where, required, "is missing", f"add `{required}:` (see spaces/README.md)")
    head_dim = _positive_int(data.get("head_dim", 64), where, "head_dim")
    kv_ratio = _positive_int(data.get("kv_ratio", 2), where, "kv_ratio")
    axes = _parse_axes({k: data[k] for k in data if k in AXES},
                       where, head_dim, kv_ratio)
    base = data.get("base") or {}
    if not isinstance(base, dict):
        _fail(where, "base", "must be a mapping of RunConfig sections", "write base: {model: {...}, train: {...}, export: {...}}")
    knobs = ()
    if "knobs" in data:
        try:
            knobs = parse_knobs(data["knobs"])
        except KnobError as exc:
            _fail(where, *exc.args)
    space = SearchSpace(
        path=where,
        base=copy.deepcopy(base),
        patterns=_parse_patterns(data["patterns"], where),
        name=str(data.get("name", Path(where).stem)),
        description=str(data.get("description", "")),
        head_dim=head_dim,
        kv_ratio=kv_ratio,
        knobs=knobs,
        code_bytes=code_bytes,
        **axes,
    )
    return _validated(space)


def _fail(where: str, key: str, problem: str, fix: str) -> None:
    raise SpaceError(f"{where}: {key}: {problem}; fix: {fix}")


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(where, key, f"{value!r} is not a positive integer", "write a whole number >= 1")
    return value


def _choice_list(value: Any, where: str, key: str, allowed: tuple | None = None, kind: type | tuple = object) -> tuple:
    """A non-empty list of distinct allowed values (a scalar is a one-element list)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        _fail(where, key, "is an empty choice list", "give at least one value, or delete the key to use base/defaults")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, kind) or (allowed is not None and v not in allowed):
            hint = f"one of {list(allowed)}" if allowed is not None else f"a {getattr(kind, '__name__', kind)}"
            _fail(where, key, f"{v!r} is not a valid choice", f"use {hint}")
    if len({repr(v) for v in values}) != len(values):
        _fail(where, key, f"{values} repeats a value", "list each choice once")
    return tuple(values)


def _parse_axes(raw: dict, where: str, head_dim: int, kv_ratio: int) -> dict:
    out = {}
    if "unique_blocks" in raw:
        out["unique_blocks"] = _choice_list(raw["unique_blocks"], where, "unique_blocks", kind=int)
        bad = [n for n in out["unique_blocks"] if n < 1]
        if bad:
            _fail(where, "unique_blocks", f"{bad} must be >= 1", "use positive block counts")
    if "untie_mlp" in raw:
        out["untie_mlp"] = _choice_list(raw["untie_mlp"], where, "untie_mlp", allowed=patterns.UNTIE_CHOICES)
    if "mlp_mult" in raw:
        out["mlp_mult"] = _choice_list(raw["mlp_mult"], where, "mlp_mult", kind=(int, float))
    if "depth_signal" in raw:
        out["depth_signal"] = _choice_list(raw["depth_signal"], where, "depth_signal", allowed=("none", "learned", "sinusoidal"))
    if "quant_bits" in raw:
        out["quant_bits"] = _choice_list(raw["quant_bits"], where, "quant_bits", allowed=QUANT_BITS)
    if "embedding_bits" in raw:
        out["embedding_bits"] = _choice_list(raw["embedding_bits"], where, "embedding_bits", allowed=EMBEDDING_BITS)
    if "width" in raw:
        entries = _choice_list(raw["width"], where, "width", kind=(int, dict))
        out["widths"] = tuple(_parse_width(e, where, f"width[{i}]", head_dim, kv_ratio) for i, e in enumerate(entries))
        labels = [w.label for w in out["widths"]]
        if len(set(labels)) != len(labels):
            _fail(where, "width", f"{labels} repeats a width", "list each width once")
    return out


def _parse_width(entry: Any, where: str, key: str, head_dim: int, kv_ratio: int) -> Width:
    """A plain model_dim (heads = model_dim / head_dim, kv = heads / kv_ratio) or an explicit head layout."""
    if isinstance(entry, int):
        d = entry
        if d % head_dim or (d // head_dim) % kv_ratio:
            _fail(where, key, f"{d} does not split into heads of head_dim={head_dim} with kv_ratio={kv_ratio}",
                  f"use a multiple of {head_dim * kv_ratio}, or write {{model_dim: {d}, num_heads: H, num_kv_heads: K}}")
        width = Width(d, d // head_dim, d // head_dim // kv_ratio)
    else:
        unknown = sorted(set(entry) - {"model_dim", "num_heads", "num_kv_heads"})
        if unknown or "model_dim" not in entry:
            _fail(where, key, f"has keys {sorted(entry)}", "write {model_dim: D, num_heads: H, num_kv_heads: K}")
        d = _positive_int(entry["model_dim"], where, f"{key}.model_dim")
        h = _positive_int(entry.get("num_heads", max(1, d // head_dim)), where, f"{key}.num_heads")
        kv = _positive_int(entry.get("num_kv_heads", max(1, h // kv_ratio)), where, f"{key}.num_kv_heads")
        width = Width(d, h, kv)
    d, h, kv = width.model_dim, width.num_heads, width.num_kv_heads
    if d % h:
        _fail(where, key, f"model_dim {d} is not divisible by num_heads {h}", f"pick num_heads dividing {d} (e.g. {d // 64 or 1} for head_dim 64) or another model_dim")
    if (d // h) % 2:
        _fail(where, key, f"head_dim {d}/{h}={d // h} is odd (RoPE needs even)", "pick num_heads so that model_dim/num_heads is even")
    if h % kv:
        _fail(where, key, f"num_heads {h} is not a multiple of num_kv_heads {kv}", "pick num_kv_heads dividing num_heads")
    return width


def _parse_patterns(raw: Any, where: str) -> tuple[PatternSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        _fail(where, "patterns", "must be a non-empty mapping of family -> parameters",
              f"write e.g. patterns: {{none: {{}}, cycle: {{repeats: [2, 3]}}}}; families: {sorted(patterns.FAMILY_PARAMS)}")
    specs = []
    for family, body in raw.items():
        key = f"patterns.{family}"
        if family not in patterns.FAMILY_PARAMS:
            _fail(where, key, "unknown pattern family", f"use one of {sorted(patterns.FAMILY_PARAMS)}")
        if family == "explicit":
            specs.append(_parse_explicit(body, where, key))
            continue
        body = body or {}
        if not isinstance(body, dict):
            _fail(where, key, "must be a mapping of parameters", f"write {key}: {{{', '.join(patterns.FAMILY_PARAMS[family])}: ...}}")
        allowed = patterns.FAMILY_PARAMS[family] + ("unique_blocks",)
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            _fail(where, f"{key}.{unknown[0]}", "unknown parameter", f"{family} takes {list(allowed)}")
        blocks = _choice_list(body["unique_blocks"], where, f"{key}.unique_blocks", kind=int) if "unique_blocks" in body else None
        params = []
        for i, name in enumerate(patterns.FAMILY_PARAMS[family]):
            if name not in body:
                if family == "tie_tail" and name == "exit_blocks":
                    continue  # defaults to 0: the tied block is the last one
                _fail(where, f"{key}.{name}", "is missing", "give a list like [2, 3] or a range like {min: 2, max: n - 1}")
            params.append(_parse_param(body[name], where, f"{key}.{name}", name, ("n",) + patterns.FAMILY_PARAMS[family][:i]))
        specs.append(PatternSpec(family=family, unique_blocks=blocks, params=tuple(params)))
    return tuple(specs)


def _parse_param(value: Any, where: str, key: str, name: str, visible: tuple[str, ...]) -> ParamSpec:
    if isinstance(value, dict):
        if set(value) != {"min", "max"}:
            _fail(where, key, f"range has keys {sorted(value)}", "write {min: LO, max: HI}; bounds may use " + ", ".join(visible))
        for bound in ("min", "max"):
            used = expr.names_used(value[bound]) - set(visible)
            if used:
                _fail(where, f"{key}.{bound}", f"uses {sorted(used)}", f"bounds may only use {list(visible)} (n = unique blocks)")
            try:
                expr.evaluate(value[bound], dict.fromkeys(visible, 1))
            except expr.ExprError as exc:
                _fail(where, f"{key}.{bound}", str(exc), "write an integer or e.g. 'n - 2'")
        return ParamSpec(name=name, lo=value["min"], hi=value["max"])
    return ParamSpec(name=name, choices=_choice_list(value, where, key, kind=int))


def _parse_explicit(body: Any, where: str, key: str) -> PatternSpec:
    if not isinstance(body, list) or not body or not all(isinstance(o, list) for o in body):
        _fail(where, key, "must be a non-empty list of orders", "write explicit: [[0, 1, 2, 1, 2, 3], ...]")
    orders = []
    for i, order in enumerate(body):
        try:
            orders.append(patterns.explicit(order))
        except patterns.PatternError as exc:
            _fail(where, f"{key}[{i}]", str(exc), "list block indices 0..n-1, each used at least once")
    if len(set(orders)) != len(orders):
        _fail(where, key, "repeats an order", "list each order once")
    return PatternSpec(family="explicit", orders=tuple(orders))


def _validated(space: SearchSpace) -> SearchSpace:
    """Check base, every pattern branch and that at least one point fits the size limit."""
    where = space.path
    _check_base(space)
    for spec in space.patterns:
        if spec.family != "explicit":
            _check_pattern(spec, space.unique_blocks, where)
    if space.knobs:
        _check_knobs(space)
    best: SizePrediction | None = None
    for _, cfg in space.configs():
        prediction = space.predict(cfg)
        if prediction.fits:
            return space
        if best is None or prediction.margin_bytes > best.margin_bytes:
            best = prediction
    _fail(where, "(whole space)", f"no config fits under the limit; the smallest is {best.describe()}",
          "add smaller choices to width, mlp_mult, unique_blocks or quant_bits (e.g. quant_bits: [6])")
    return space


def _check_base(space: SearchSpace) -> None:
    where, base = space.path, space.base
    searched = list(PATTERN_KEYS)
    if space.widths:
        searched += WIDTH_KEYS
    searched += [keys for axis, keys in AXIS_KEYS.items() if getattr(space, axis)]
    for section, key in searched:
        if key in (base.get(section) or {}):
            _fail(where, f"base.{section}.{key}", "is set by a searched axis", "remove it from base (or make that axis a single choice)")
    for knob in space.knobs:
        if (knob.section, knob.key) in searched:
            _fail(where, f"knobs.{knob.name}", "is also set by a pattern or axis of this space",
                  "search it through that axis, or drop the knob")
        if knob.key in (base.get(knob.section) or {}):
            _fail(where, f"knobs.{knob.name}", f"is also set in base.{knob.section}",
                  f"remove {knob.key} from base.{knob.section} (the knob sets it), or drop the knob")
    data = copy.deepcopy(base)
    try:
        # With the patterns' first order: base keys may refer to depths (e.g. value_embed_layers) it has.
        n, order = next(_pattern_orders(space))
        data.setdefault("model", {}).update(unique_blocks=n, virtual_layers=list(order))
    except patterns.PatternError:
        pass  # the pattern check names it
    try:
        from_dict(data, where="base")
    except ConfigError as exc:
        _fail(where, "base", str(exc), "use RunConfig sections model/train/export with keys from trainer/model_config.py and trainer/run_config.py")


def _check_pattern(spec: PatternSpec, default_blocks: tuple[int, ...], where: str) -> None:
    """Every choice of this family must give a valid order for every block count it is offered with."""
    key = f"patterns.{spec.family}"
    for n in spec.unique_blocks or default_blocks:
        for params in _param_combos(spec, n, where):
            try:
                patterns.expand(spec.family, n, params)
            except patterns.PatternError as exc:
                name = str(exc).split()[0]
                _fail(where, f"{key}.{name}", f"with unique_blocks={n} and {params}: {exc}",
                      f"keep it inside the blocks, e.g. a range {{min: ..., max: n - 1}}, or restrict {key}.unique_blocks")


def _param_combos(spec: PatternSpec, n: int, where: str) -> Iterator[dict[str, int]]:
    def rec(i: int, env: dict[str, int]) -> Iterator[dict[str, int]]:
        if i == len(spec.params):
            yield {k: v for k, v in env.items() if k != "n"}
            return
        param = spec.params[i]
        options = param.options(env)
        if not options.values:
            _fail(where, f"patterns.{spec.family}.{param.name}",
                  f"range {options.lo}..{options.hi} is empty when unique_blocks={n} and {env}",
                  f"widen the range or restrict patterns.{spec.family}.unique_blocks")
        for v in options.values:
            yield from rec(i + 1, {**env, param.name: v})

    yield from rec(0, {"n": n})


def _pattern_orders(space: SearchSpace) -> Iterator[tuple[int, tuple[int, ...]]]:
    """Every (unique_blocks, order) the patterns offer, without the other axes."""
    for spec in space.patterns:
        if spec.family == "explicit":
            yield from ((patterns.blocks_of_explicit(o), o) for o in spec.orders)
            continue
        for n in spec.unique_blocks or space.unique_blocks:
            for params in _param_combos(spec, n, space.path):
                yield n, patterns.expand(spec.family, n, params)


def _check_knobs(space: SearchSpace) -> None:
    """Every knob choice must give a valid config with every order the patterns offer (on top of base, with the
    keys its `when` names at their first allowed value): a choice that depends on the order is written in n and
    depth, so no point of the space is invalid for one order only."""
    for n, order in sorted(set(_pattern_orders(space))):
        env = {"n": n, "depth": len(order)}
        for knob in space.knobs:
            options = knob.options(env)
            if not options.values:
                _fail(space.path, f"knobs.{knob.name}", f"range {knob.lo}..{knob.hi} is empty when n={n}, depth={len(order)}",
                      "widen the range, e.g. {min: 0, max: depth}")
            for label in options.values:
                data = copy.deepcopy(space.base)
                model = data.setdefault("model", {})
                model.update(unique_blocks=n, virtual_layers=[] if order == tuple(range(n)) else list(order))
                for name, allowed in knob.when:
                    section, key = name.split(".")
                    data.setdefault(section, {})[key] = list(allowed[0]) if isinstance(allowed[0], tuple) else allowed[0]
                value = knob.value(label, env)
                data.setdefault(knob.section, {})[knob.key] = list(value) if isinstance(value, tuple) else value
                try:
                    from_dict(data, where=f"order {list(order)}")
                except ConfigError as exc:
                    _fail(space.path, f"knobs.{knob.name}", f"{label!r} is invalid with unique_blocks={n}, {exc}",
                          "write the choice in n and depth (e.g. {min: 0, max: depth} or 'n - 4'), or restrict the patterns")
