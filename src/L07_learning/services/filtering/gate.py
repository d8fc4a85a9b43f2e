"""Which rules can match a text at all, from the literals each one needs: one pass, whatever the number of rules.

A rule runs only when one of its keywords occurs. The text is read once by an RE2 set of the keyword alternations
(a keyword test per keyword read a long text again for every keyword, ~40 passes). The set holds only literals, so
its automaton stays small: no counted repetition to blow up the DFA, which a set of the rules' own patterns does on
text built for it (measured: 18 s for 1 MB).
"""

from __future__ import annotations

import re2


class KeywordGate:
    """``rules(data)``: the indices of the rules (in the order given) whose keywords occur in ``data``.

    Args:
        keywords: Per rule, its lower-case ASCII keywords; ``None`` for a rule that always runs.
    """

    def __init__(self, keywords: list[tuple[bytes, ...] | None]) -> None:
        self._keywords = keywords
        self._always = [i for i, k in enumerate(keywords) if k is None]
        self._gated = [i for i, k in enumerate(keywords) if k is not None]
        options = re2.Options()
        options.case_sensitive = False
        self._set = re2.Set.SearchSet(options)
        for i in self._gated:
            self._set.Add(b"|".join(re2.escape(k) for k in keywords[i]))  # type: ignore[union-attr]
        self._set.Compile()

    def rules(self, data: bytes) -> set[int]:
        hits = self._set.Match(data) or ()
        return {*self._always, *(self._gated[j] for j in hits)}
