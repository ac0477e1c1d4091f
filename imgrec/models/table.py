"""The models table of ``imgrec models list`` and the docs: published ImageNet
figures for backbones, counted ones (from a build) for course and scratch models."""

from __future__ import annotations

import functools
from typing import Any

from imgrec.config import ModelConfig
from imgrec.models.build import build_model
from imgrec.models.registry import ModelSpec, list_models
from imgrec.text_table import text_table


def _built_stats(spec: ModelSpec) -> tuple[float, int]:
    """Parameters (millions) and weighted-layer depth of a course/scratch model
    at its default size with 10 classes (2 for cats vs dogs)."""
    classes = 2 if spec.name == "seed_catsdogs" else 10
    model = build_model(ModelConfig(name=spec.name), classes, spec.input_size)
    depth = sum(1 for layer in model.layers if layer.weights)
    return model.count_params() / 1e6, depth


def models_table() -> list[dict[str, Any]]:
    """One row per registry entry, for ``imgrec models list`` and the docs.
    Backbone numbers are the published ImageNet ones; course/scratch numbers are
    counted from a build (10 classes; 2 for seed_catsdogs)."""
    return [dict(row) for row in _table_rows()]


@functools.lru_cache(maxsize=1)
def _table_rows() -> tuple[dict[str, Any], ...]:
    rows = []
    for spec in list_models():
        params_m, depth = spec.params_m, spec.depth
        if spec.kind != "backbone":
            params_m, depth = _built_stats(spec)
        rows.append(
            dict(
                name=spec.name,
                kind=spec.kind,
                params_m=params_m,
                depth=depth,
                size_mb=spec.size_mb,
                top1=spec.top1,
                top5=spec.top5,
                input_size=spec.input_size,
                min_size=spec.min_size,
                preprocessing=spec.preprocessing,
                alpha=spec.alpha,
                description=spec.description,
            )
        )
    return tuple(rows)


def format_models_table(rows: list[dict[str, Any]] | None = None) -> str:
    """``models_table()`` as aligned text."""
    rows = models_table() if rows is None else rows

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = ("name", "kind", "params", "depth", "size MB", "top-1", "top-5", "input", "preprocessing", "alpha")
    lines = []
    for r in rows:
        params = "-" if r["params_m"] is None else (f"{r['params_m']:.1f}M" if r["params_m"] >= 1 else f"{r['params_m'] * 1000:.0f}k")
        lines.append(
            (
                r["name"],
                r["kind"],
                params,
                num(r["depth"], "d"),
                num(r["size_mb"], "g"),
                num(r["top1"], ".1f"),
                num(r["top5"], ".1f"),
                f"{r['input_size'][0]}x{r['input_size'][1]}",
                r["preprocessing"],
                "yes" if r["alpha"] else "",
            )
        )
    return text_table(header, lines, right={2, 3, 4, 5, 6})
