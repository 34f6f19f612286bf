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
