"""The rules configuration: every threshold of every monitor, read from one TOML file
(``streams/rules.toml`` by default). Parsing is strict: an unknown key, monitor, entity or
metric fails at start-up with the file and the rule named."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from streams.errors import RulesError

DEFAULT_RULES = Path(__file__).with_name("rules.toml")

# monitor -> the entity types it aggregates by
ENTITIES: dict[str, tuple[str, ...]] = {
    "playback": ("title", "device_type", "cdn_edge", "country"),
    "cdn": ("cdn_edge",),
    "login": ("source_ip", "account"),
    "starts": ("global", "country"),
}
# monitor -> metric -> the count that `min_samples` applies to
METRICS: dict[str, dict[str, str]] = {
    "playback": {
        "starts": "starts",
        "play_failure_rate": "starts",
        "startup_p50_ms": "played",
        "startup_p95_ms": "played",
        "rebuffer_ratio": "heartbeats",
        "avg_bitrate_kbps": "heartbeats",
        "fatal_errors": "starts",
    },
    "cdn": {
        "requests": "requests",
        "error_rate": "requests",
        "latency_p95_ms": "requests",
        "cache_hit_ratio": "requests",
    },
    "login": {
        "attempts": "attempts",
        "failures": "attempts",
        "failure_rate": "attempts",
        "failed_accounts": "attempts",
        "source_ips": "attempts",
    },
    "starts": {"starts_per_s": "starts"},
}
SEVERITIES = ("INFO", "WARNING", "CRITICAL")
DIRECTIONS = ("above", "below")


@dataclass(frozen=True)
class Rule:
    """One alerting rule. Window rules (``baseline == "none"``) compare the metric with
    ``fire``/``clear``; baseline rules compare its deviation from a learned baseline, in
    standard deviations, with ``fire``/``clear`` (see rules.toml)."""

    name: str
    monitor: str
    entity: str
    metric: str
    fire: float
    clear: float
    severity: str = "WARNING"
    direction: str = "above"
    min_samples: int = 1
    clear_windows: int = 1
    baseline: str = "none"
    alpha: float = 0.02
    smooth_s: int = 10
    warmup_s: int = 120
    min_change: float = 0.3

    @property
    def uses_baseline(self) -> bool:
        return self.baseline != "none"

    def bad(self, value: float, threshold: float) -> bool:
        """Whether ``value`` is on the bad side of ``threshold`` (inclusive)."""
        return value >= threshold if self.direction == "above" else value <= threshold


@dataclass(frozen=True)
class Windows:
    quality_s: int = 60
    grace_s: int = 5
    retain: int = 15
    starts_retain_s: int = 300
    viewer_ttl_s: int = 30
    idle_partition_s: float = 10.0

    @property
    def quality_ms(self) -> int:
        return self.quality_s * 1000

    @property
    def grace_ms(self) -> int:
        return self.grace_s * 1000


@dataclass(frozen=True)
class InputLimits:
    max_future_s: int = 300
    max_past_s: int = 86_400


@dataclass(frozen=True)
class RuleBook:
    """Everything in a rules file."""

    windows: Windows
    input: InputLimits
    rules: tuple[Rule, ...]
    source: str = "<rules>"

    def for_monitor(self, monitor: str, entity: str | None = None) -> list[Rule]:
        return [r for r in self.rules if r.monitor == monitor and entity in (None, r.entity)]

    def __getitem__(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(f"no rule named {name!r} in {self.source}")


def load_rules(path: Path | None = None) -> RuleBook:
    """Read and check a rules file (default: ``streams/rules.toml``)."""
    path = path or DEFAULT_RULES
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RulesError(str(path), str(error)) from error
    return parse_rules(data, str(path))


def parse_rules(data: dict[str, Any], source: str = "<rules>") -> RuleBook:
    unknown = set(data) - {"windows", "input", "rules"}
    if unknown:
        raise RulesError(source, f"unknown section {sorted(unknown)[0]!r}")
    windows = _build(Windows, data.get("windows", {}), source, "[windows]")
    limits = _build(InputLimits, data.get("input", {}), source, "[input]")
    rules = tuple(_rule(entry, source) for entry in data.get("rules", []))
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise RulesError(source, f"rule name {duplicate!r} is used twice")
    if windows.quality_s < 1 or windows.grace_s < 0 or windows.retain < 1:
        raise RulesError(source, "[windows] quality_s and retain must be >= 1 and grace_s >= 0")
    return RuleBook(windows, limits, rules, source)


def _build(cls: Any, values: dict[str, Any], source: str, where: str) -> Any:
    known = {f.name for f in fields(cls)}
    extra = set(values) - known
    if extra:
        raise RulesError(
            source, f"{where}: unknown key {sorted(extra)[0]!r}; known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except TypeError as error:
        raise RulesError(source, f"{where}: {error}") from error


def _rule(entry: dict[str, Any], source: str) -> Rule:
    where = f"rule {entry.get('name', '?')!r}"
    rule: Rule = _build(Rule, entry, source, where)
    problem = _problem(rule)
    if problem:
        raise RulesError(source, f"{where}: {problem}")
    return rule


def _problem(rule: Rule) -> str | None:
    if rule.monitor not in ENTITIES:
        return f"monitor {rule.monitor!r} is not one of {', '.join(ENTITIES)}"
    if rule.entity not in ENTITIES[rule.monitor]:
        return f"entity {rule.entity!r} is not one of {', '.join(ENTITIES[rule.monitor])}"
    if rule.metric not in METRICS[rule.monitor]:
        return f"metric {rule.metric!r} is not one of {', '.join(METRICS[rule.monitor])}"
    if rule.severity not in SEVERITIES or rule.direction not in DIRECTIONS:
        return f"severity must be one of {SEVERITIES} and direction one of {DIRECTIONS}"
    if rule.uses_baseline != (rule.monitor == "starts") or rule.baseline not in ("none", "ewma"):
        return "starts rules need baseline = 'ewma'; other monitors use fixed thresholds"
    if rule.uses_baseline:
        if not 0 < rule.alpha <= 1 or rule.smooth_s < 1 or rule.clear > rule.fire:
            return "baseline rules need 0 < alpha <= 1, smooth_s >= 1 and clear <= fire (sigmas)"
        return None
    if rule.bad(rule.clear, rule.fire) and rule.clear != rule.fire:
        return f"clear ({rule.clear}) must be on the good side of fire ({rule.fire}) ({rule.direction})"
    if rule.min_samples < 1 or rule.clear_windows < 1:
        return "min_samples and clear_windows must be >= 1"
    return None


def render_rules(data: dict[str, Any]) -> str:
    """A rules file for ``data`` (the shape ``parse_rules`` reads): lets tests and tools
    derive a variant of rules.toml (say, with short windows) without retyping it."""
    out = []
    for section in ("windows", "input"):
        if section in data:
            out.append(f"[{section}]")
            out += [f"{k} = {_toml(v)}" for k, v in data[section].items()]
            out.append("")
    for rule in data.get("rules", []):
        out.append("[[rules]]")
        out += [f"{k} = {_toml(v)}" for k, v in rule.items()]
        out.append("")
    return "\n".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
