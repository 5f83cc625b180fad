"""Fuzzy matching of file paths, as a quick-open picker ranks them: the typed characters in
order, anywhere in the path, preferring the file's name, runs of adjacent characters and the
starts of words."""

from __future__ import annotations

from dataclasses import dataclass

# Characters after which a letter starts a word (as in ``my_module/test-io.py``).
_SEPARATORS = frozenset("/_-. ")
_NAME_BONUS = 1000
_RUN_BONUS = 5
_WORD_START_BONUS = 3


@dataclass(frozen=True)
class FuzzyMatch:
    """A path that matches, its score (higher is better) and the matched character indices."""

    path: str
    score: int
    positions: tuple[int, ...]


def like_pattern(query: str) -> str:
    """An ``ILIKE`` pattern that every path matching ``query`` matches (``%a%b%``, spaces
    ignored): a cheap filter before ranking."""
    escaped = (
        c.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for c in query if c != " "
    )
    return "%" + "%".join(escaped) + "%"


def fuzzy_match(query: str, path: str) -> FuzzyMatch | None:
    """How ``path`` matches ``query`` (case-insensitive), or None if it does not."""
    lower = path.lower()
    needle = query.lower().replace(" ", "")
    name_start = path.rfind("/") + 1
    positions = _positions(needle, lower, name_start)
    bonus = _NAME_BONUS
    if positions is None:
        positions = _positions(needle, lower, 0)
        bonus = 0
    if positions is None:
        return None
    score = bonus - len(path)
    for i, at in enumerate(positions):
        if i and positions[i - 1] == at - 1:
            score += _RUN_BONUS
        if (
            at == 0
            or path[at - 1] in _SEPARATORS
            or (path[at].isupper() and path[at - 1].islower())
        ):
            score += _WORD_START_BONUS
    return FuzzyMatch(path, score, tuple(positions))


def _starts_word(path: str, at: int) -> bool:
    """Whether ``path[at]`` starts a word: after a separator, or a capital after a small letter."""
    return at == 0 or path[at - 1] in _SEPARATORS or (path[at].isupper() and path[at - 1].islower())


def _positions(needle: str, haystack: str, start: int) -> list[int] | None:
    """Where ``needle``'s characters are first found in order in ``haystack[start:]``."""
    found: list[int] = []
    at = start
    for char in needle:
        at = haystack.find(char, at)
        if at < 0:
            return None
        found.append(at)
        at += 1
    return found


def rank(query: str, paths: list[str], limit: int) -> list[FuzzyMatch]:
    """The best ``limit`` matches of ``query`` among ``paths``, best first (then by path)."""
    matches = [m for m in (fuzzy_match(query, p) for p in paths) if m is not None]
    matches.sort(key=lambda m: (-m.score, m.path))
    return matches[:limit]
