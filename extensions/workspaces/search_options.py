"""What a search asks for, read from a request's arguments and turned into PostgreSQL regular
expressions (POSIX ARE, the dialect of ``~``): the text's pattern and the path globs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from platform_server.errors import InvalidInput

# The longest search text, replacement or glob list accepted (characters).
MAX_TEXT = 1000
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
# ARE characters that are not alphanumeric: escaped with a backslash, each is literal.
_NOT_ALNUM = re.compile(r"([^0-9A-Za-z\s])")
# A leading ``***`` director or ``(?flags)``: options that wrapping the pattern would break.
_EMBEDDED_OPTIONS = re.compile(r"^(\*\*\*|\(\?[a-z]+\))")
# What counts as part of a word for whole-word search (as VS Code's default word characters).
_WORD_CHAR = "[[:alnum:]_]"
# A comma outside braces: it separates two globs.
_GLOB_SEPARATOR = re.compile(r",(?![^{]*})")


@dataclass(frozen=True)
class SearchOptions:
    """One search's options, validated."""

    query: str
    regex: bool = False
    case_sensitive: bool = False
    whole_word: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_results: int | None = None
    replace: str | None = None

    @property
    def pattern(self) -> str:
        """The ARE that finds the text within one line (newline-sensitive: ``.`` and ``[^x]``
        never cross a line end, ``^`` and ``$`` match at each line's ends)."""
        if self.regex:
            if _EMBEDDED_OPTIONS.match(self.query):
                msg = (
                    "Embedded options ('***' or '(?...)' at the start) are not supported: "
                    "use the case and whole-word options."
                )
                raise InvalidInput(msg)
            core = self.query
        else:
            core = _NOT_ALNUM.sub(r"\\\1", self.query)
        if self.whole_word:
            core = f"(?<!{_WORD_CHAR})(?:{core})(?!{_WORD_CHAR})"
        return f"(?n){core}"

    @property
    def replacement(self) -> str | None:
        """The replacement as ``regexp_replace`` reads it: ``\\1``..``\\9`` and ``\\&`` refer
        to the match in regex mode; otherwise literal (backslashes doubled)."""
        if self.replace is None or self.regex:
            return self.replace
        return self.replace.replace("\\", "\\\\")


def parse_bool(name: str, value: str) -> bool:
    """``true``/``false`` (or 1/0, yes/no, on/off); ``InvalidInput`` otherwise."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    msg = f"'{name}' must be true or false, not {value!r}."
    raise InvalidInput(msg)


def parse_int(name: str, value: str, low: int, high: int) -> int:
    """An integer between ``low`` and ``high``; ``InvalidInput`` otherwise."""
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        msg = f"'{name}' must be a whole number from {low} to {high}, not {value!r}."
        raise InvalidInput(msg)
    return number


def parse_globs(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated globs (a comma inside ``{a,b}`` separates alternatives), blanks
    dropped."""
    check_length(name, value)
    return tuple(part.strip() for part in _GLOB_SEPARATOR.split(value) if part.strip())


def check_length(name: str, value: str) -> None:
    """``InvalidInput`` for text over ``MAX_TEXT`` characters or holding NUL."""
    if len(value) > MAX_TEXT:
        msg = f"'{name}' is longer than {MAX_TEXT} characters."
        raise InvalidInput(msg)
    if "\x00" in value:
        msg = f"'{name}' cannot contain a NUL character."
        raise InvalidInput(msg)


SEARCH_ARGUMENTS = frozenset(
    {"q", "regex", "case", "word", "include", "exclude", "max_results", "replace"}
)


def single_values(
    arguments: Mapping[str, Sequence[str]], allowed: frozenset[str]
) -> dict[str, str]:
    """Each argument's one value; ``InvalidInput`` for an unknown or repeated one."""
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        msg = f"Unknown option(s): {', '.join(unknown)}."
        raise InvalidInput(msg)
    args: dict[str, str] = {}
    for name, values in arguments.items():
        if len(values) != 1:
            msg = f"'{name}' is given more than once."
            raise InvalidInput(msg)
        args[name] = values[0]
    return args


def parse_file_query(arguments: Mapping[str, Sequence[str]]) -> str:
    """A quick-open search's ``q`` (empty when not given)."""
    query = single_values(arguments, frozenset({"q"})).get("q", "")
    check_length("q", query)
    return query


def parse_search(arguments: Mapping[str, Sequence[str]], max_results: int) -> SearchOptions:
    """A search's options from its query arguments (each given once); ``InvalidInput`` for
    an unknown, repeated or malformed one. ``max_results`` is the largest allowed."""
    args = single_values(arguments, SEARCH_ARGUMENTS)
    query = args.get("q", "")
    if not query:
        msg = "Give the text to search for as 'q'."
        raise InvalidInput(msg)
    check_length("q", query)
    replace = args.get("replace")
    if replace is not None:
        check_length("replace", replace)
    limit = args.get("max_results")
    return SearchOptions(
        query=query,
        regex=parse_bool("regex", args.get("regex", "")),
        case_sensitive=parse_bool("case", args.get("case", "")),
        whole_word=parse_bool("word", args.get("word", "")),
        include=parse_globs("include", args.get("include", "")),
        exclude=parse_globs("exclude", args.get("exclude", "")),
        max_results=None if limit is None else parse_int("max_results", limit, 1, max_results),
        replace=replace,
    )


def glob_pattern(globs: Sequence[str]) -> str | None:
    """One ARE matching the paths any of ``globs`` matches (None for none).

    As VS Code's "files to include": ``*`` is any run of characters but ``/``, ``**`` any run
    of folders, ``?`` one character, ``{a,b}`` either; a glob without ``/`` matches a file or
    folder name at any depth, one with ``/`` matches from the workspace's root; a glob that
    matches a folder matches everything in it.
    """
    if not globs:
        return None
    parts = []
    for glob in globs:
        body = _glob_body(glob.strip("/"))
        anchor = "^" if "/" in glob.strip("/") else "(^|/)"
        parts.append(f"{anchor}{body}(/|$)")
    return "|".join(f"({part})" for part in parts)


def _glob_body(glob: str) -> str:
    out = []
    i = 0
    in_braces = False
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**/", i):
            out.append("(.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "{" and not in_braces:
            in_braces = True
            out.append("(")
        elif char == "}" and in_braces:
            in_braces = False
            out.append(")")
        elif char == "," and in_braces:
            out.append("|")
        else:
            out.append(_NOT_ALNUM.sub(r"\\\1", char))
        i += 1
    if in_braces:
        msg = f"Unclosed '{{' in the glob {glob!r}."
        raise InvalidInput(msg)
    return "".join(out)
