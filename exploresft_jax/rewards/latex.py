"""LaTeX command tables shared by the verifier's two light readers of an answer: `fastparse` (exact values without
the LaTeX grammar) and `guards` (the size of a value before symbolic work). One table each, so that both read
`\\dfrac`, `\\left(` or `\\times` the same way."""

from __future__ import annotations

FRACTION_COMMANDS = frozenset({"\\frac", "\\dfrac", "\\tfrac", "\\cfrac"})
# products written as commands (`*` and `\\ast` are the guards' own additions)
PRODUCT_COMMANDS = frozenset({"\\cdot", "\\times"})
# delimiter sizing that carries no value: `\\left( ... \\right)` reads as `( ... )`
DELIMITER_SIZING = frozenset({"\\left", "\\right", "\\mleft", "\\mright"})
