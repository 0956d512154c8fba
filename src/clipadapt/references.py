"""Published numbers to print beside ours (`clipadapt report --references`), each with its source.

Only values read from a public source are listed. ViT-B/16, 16 shots, average over the 11 datasets
and 3 seeds.
"""

_MMA_README = "MMA repository README (github.com/ZjjConan/Multi-Modal-Adapter), base-to-novel table"

REFERENCES: dict[tuple[str, str], dict[str, dict]] = {
    ("base2novel", "Average"): {
        "CLIP": {"base": 69.34, "novel": 74.22, "hm": 71.70, "source": _MMA_README},
        "CoOp": {"base": 82.69, "novel": 63.22, "hm": 71.66, "source": _MMA_README},
        "CoCoOp": {"base": 80.47, "novel": 71.69, "hm": 75.83, "source": _MMA_README},
        "MaPLe": {"base": 82.28, "novel": 75.14, "hm": 78.55, "source": _MMA_README},
        "MMA": {"base": 83.20, "novel": 76.80, "hm": 79.87, "source": _MMA_README},
    },
}
