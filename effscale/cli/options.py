"""Option types shared by the command modules."""

from __future__ import annotations

import math

import click


class Number(click.FloatRange):
    """A float option that refuses nan and inf, as well as values outside its range."""

    name = "number"  # click's default says "not a valid float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        # nan passes FloatRange (every comparison with nan is False); inf passes an open top.
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


AUGMENT_HELP = "Comma-separated: flip, crop, rotate, zoom, normalize; or 'none'."


def augment_list(ctx, param, value):
    """``--augment flip,crop`` as a tuple of known names; ``none`` is the empty tuple."""
    if value is None:
        return None
    names = [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
    from effscale.data.datasets import AUGMENTATIONS

    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise click.BadParameter(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return tuple(names)
