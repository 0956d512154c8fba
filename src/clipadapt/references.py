"""Published numbers to print beside ours (`clipadapt report --references`), each with its source.

Keys are (protocol, table): the table is "Average" (the mean over the 11 datasets) or a dataset named as
clipadapt names it (imagenet, caltech101, oxford_pets, stanford_cars, oxford_flowers, food101,
fgvc_aircraft, sun397, dtd, eurosat, ucf101), which is also the heading of that dataset's table in the
report. Only values read from a public source are listed: ViT-B/16, 16 shots, 3 seeds.

Listed: the base-to-novel averages of CLIP, CoOp, CoCoOp, MaPLe and MMA (MMA README), KgCoOp (KgCoOp
README), PromptSRC (PromptSRC README), MMA++ (HM only) and MMRL (a poster). The CoCoOp and MaPLe
averages are also printed, with the same values, by the MaPLe README
(github.com/muzairkhattak/multimodal-prompt-learning) and the PromptSRC README.

Missing, for want of a source read here:
- every per-dataset base-to-novel row. The papers print them (MaPLe arXiv 2210.03117, PromptSRC
  2307.06948, KgCoOp 2303.13283, MMRL 2503.08497, MMA CVPR 2024), but the stored copies searched for
  this list give only their opening passages, never the tables, and the READMEs print averages only.
  Later papers that reprint these tables were not used: one seen prints CoCoOp's average novel accuracy
  as 72.30 where CoCoOp's own numbers and every README give 71.69.
- MMRL's average as its own paper prints it: the row is the poster's, unchecked.
- CLIP-LoRA (its paper reports the K-shot protocol only; its README prints no table).
- MMA++'s base and novel accuracy (its README gives the HM only).
"""

_MMA_README = "MMA repository README (github.com/ZjjConan/Multi-Modal-Adapter), base-to-novel table"
_PROMPTSRC_README = (
    "PromptSRC repository README (github.com/muzairkhattak/PromptSRC, commit bb95c77), "
    "'PromptSRC in comparison with existing state-of-the-art' (11 datasets, 3 seeds)"
)
_KGCOOP_README = (
    "KgCoOp repository README (github.com/htyao89/KgCoOp, commit c43ccc3), base-to-new table "
    "(its CLIP row is the 11-dataset average; it prints New 73.6, H 77.0)"
)
_MMA_PP_README = (
    "MMA++ repository README (github.com/ZjjConan/VLM-MMApp, commit e686c34), 'Base2New (HM)' column; "
    "it gives no base or novel accuracy"
)
_RMMA_POSTER = (
    "R-MMA poster, 'Overall Performance Summary', MMRL as prior state of the art "
    "(/work/shared/seeds/002); not checked against the MMRL paper's own table"
)

REFERENCES: dict[tuple[str, str], dict[str, dict]] = {
    ("base2novel", "Average"): {
        "CLIP": {"base": 69.34, "novel": 74.22, "hm": 71.70, "source": _MMA_README},
        "CoOp": {"base": 82.69, "novel": 63.22, "hm": 71.66, "source": _MMA_README},
        "CoCoOp": {"base": 80.47, "novel": 71.69, "hm": 75.83, "source": _MMA_README},
        "MaPLe": {"base": 82.28, "novel": 75.14, "hm": 78.55, "source": _MMA_README},
        "MMA": {"base": 83.20, "novel": 76.80, "hm": 79.87, "source": _MMA_README},
        "KgCoOp": {"base": 80.73, "novel": 73.60, "hm": 77.00, "source": _KGCOOP_README},
        "PromptSRC": {"base": 84.26, "novel": 76.10, "hm": 79.97, "source": _PROMPTSRC_README},
        "MMA++": {"hm": 82.07, "source": _MMA_PP_README},
        "MMRL": {"base": 85.68, "novel": 77.16, "hm": 81.20, "source": _RMMA_POSTER},
    },
}


def published_rows(protocol: str, table: str) -> dict[str, dict]:
    """The published rows, by method, for one table of the report ('Average' or a dataset); {} if none."""
    return REFERENCES.get((protocol, table), {})
