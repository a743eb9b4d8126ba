"""The allocation options of the modes that code every scale at its own quality
(learned_ps, mpeg_anchor_ps): one declaration, so that both modes take and explain
--target-bpp, --lambda and --allocation the same way."""

from __future__ import annotations

from typing import Any

from codec.modes.base import option

ALLOCATIONS = ("mfiba", "mfiba_ft", "exhaustive", "uniform")


def target_bpp_option() -> Any:
    return option(
        None,
        "allocate to this rate: bits of the container per original-image pixel (lambda' by bisection)",
        kind=float,
    )


def lambda_option() -> Any:
    return option(None, "allocate with this Lagrange multiplier lambda' (MFIBA's rate weight)", kind=float)


def allocation_option(step: str) -> Any:
    """--allocation; `step` names the mode's per-scale quality in words ("phi", "QP")."""
    return option(
        "mfiba",
        "the allocation of --target-bpp / --lambda: mfiba (importance predicted by precoding), mfiba_ft "
        f"(that importance fine-tuned by line search), exhaustive (every scale precoded at every {step}, "
        f"the best combination by the measured task loss; small {step} grids only), uniform (one {step} "
        "for every scale)",
        choices=ALLOCATIONS,
    )
