"""``persona models list``: each model's newest version, its metrics with sample sizes, intervals and a trend arrow
against the previous version, the segment descriptions, kept versions and the pin."""

from __future__ import annotations

import json
from typing import Any

import redis

from state.keys import RedisKeys
from state.model_registry import kept_record, model_info

# Per metric: the sample it stands on, and whether lower is better (for the arrow's meaning).
SAMPLE = {"roc_auc": "examples", "roc_auc_recent": "examples", "log_loss": "examples", "churn": "churn_n",
          "silhouette": "examples", "label_switching": "label_switching_n"}
LOWER_IS_BETTER = {"log_loss", "churn", "label_switching", "stale_examples"}
HIDDEN = {"positives", "negatives", "roc_auc_ci_low", "roc_auc_ci_high", "churn_n", "label_switching_n"}


def arrow(now: float, before: float | None, lower_is_better: bool, tolerance: float = 0.001) -> str:
    """↑ or ↓ (the direction of the value), with (better) or (worse); → within ``tolerance``.

    >>> arrow(0.82, 0.80, False), arrow(0.30, 0.35, True), arrow(0.5, 0.5004, False), arrow(0.5, None, False)
    ('↑ (better)', '↓ (better)', '→', '')
    """
    if before is None:
        return ""
    if abs(now - before) <= tolerance:
        return "→"
    better = (now < before) == lower_is_better
    return f"{'↑' if now > before else '↓'} ({'better' if better else 'worse'})"


def model_listing(client: redis.Redis, keys: RedisKeys, as_json: bool = False) -> str:
    infos: dict[str, Any] = {}
    for name in ("propensity", "segments", "bots"):
        info = model_info(client, keys, name)
        if info is not None:
            previous = kept_record(client, keys, name, info["version"] - 1)
            info["previous_metrics"] = previous["metrics"] if previous else None
        infos[name] = info
    if as_json:
        return json.dumps(infos, sort_keys=True, indent=2)
    lines = []
    for name, info in infos.items():
        if info is None:
            lines.append(f"{name}: never published")
            continue
        pin = f", pinned to v{info['pinned']}" if info.get("pinned") else ""
        lines.append(f"{name} v{info['version']} ({info['examples']:,} examples{pin}; kept: "
                     f"{', '.join(f'v{v}' for v in info['versions'])})")
        metrics, before = info["metrics"], info.get("previous_metrics") or {}
        for metric, value in sorted(metrics.items()):
            if metric in HIDDEN:
                continue
            n = metrics.get(SAMPLE.get(metric, ""), info["examples"])
            extra = ""
            if metric == "roc_auc" and "roc_auc_ci_low" in metrics:
                extra = f" [{metrics['roc_auc_ci_low']:.3f}, {metrics['roc_auc_ci_high']:.3f}] " \
                        f"({metrics.get('positives', 0):,.0f} bought, {metrics.get('negatives', 0):,.0f} did not)"
            trend = arrow(value, before.get(metric), metric in LOWER_IS_BETTER)
            lines.append(f"  {metric:16} {value:.3f}{extra}  n={n:,.0f}  {trend}".rstrip())
        for text in info.get("descriptions", ()):
            lines.append(f"  {text}")
    return "\n".join(lines)
