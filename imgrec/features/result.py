"""What a baseline measured and learned, and how it reads as text and JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgrec.features.classifier import LinearClassifier


@dataclass
class BaselineResult:
    """What ``train_baseline`` measured and learned."""

    source: str
    class_names: list[str]
    features: list[str]
    split: str  # what accuracy was measured on: "test" (the test tree) or "val" (held out of train)
    accuracy: float
    chance: float  # accuracy of always guessing the most common class
    p_value: float
    separated: bool
    verdict: str
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]
    counts: dict[str, int]
    model: LinearClassifier
    train_accuracy: float
    plot: dict[str, Any]  # {"features": [x, y], "accuracy": 2-feature accuracy, "model": ...}
    bad_files: list[dict[str, str]] = field(default_factory=list)
    cnn: dict[str, Any] | None = None  # {"accuracy", "count", "split", "source"}
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"baseline on {self.source}: {len(self.class_names)} classes, "
            f"{len(self.features)} feature(s), train {self.counts['train']}, {self.split} {self.counts[self.split]}",
            f"  {self.split} accuracy {self.accuracy:.4f} (chance {self.chance:.4f}, train {self.train_accuracy:.4f})",
            "  per class: " + ", ".join(f"{c} {a:.2f}" for c, a in self.per_class_accuracy.items()),
        ]
        if self.cnn:
            lines.append(
                f"  side by side: baseline {self.accuracy:.4f} ({self.split}, {self.counts[self.split]} images) | "
                f"CNN {self.cnn['accuracy']:.4f} ({self.cnn.get('split', '?')}, {self.cnn.get('count', '?')} images)"
                f"  [{self.cnn['source']}]"
            )
            if self.cnn.get("warning"):
                lines.append(f"  note: {self.cnn['warning']}")
        if self.bad_files:
            lines.append(f"  skipped {len(self.bad_files)} bad file(s), e.g. {self.bad_files[0]['path']}: "
                         f"{self.bad_files[0]['reason']}")
        lines.append(f"  verdict: {self.verdict}")
        for name, uri in self.outputs.items():
            lines.append(f"  {name}: {uri}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "class_names": self.class_names,
            "features": self.features,
            "split": self.split,
            "accuracy": self.accuracy,
            "chance": self.chance,
            "p_value": self.p_value,
            "separated": self.separated,
            "verdict": self.verdict,
            "train_accuracy": self.train_accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": self.confusion,
            "counts": self.counts,
            "plot": {"features": self.plot["features"], "accuracy": self.plot["accuracy"]},
            "cnn": self.cnn,
            "bad_files": self.bad_files,
            "model": self.model.to_dict(),
        }
