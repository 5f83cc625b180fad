"""Secrets out of every log record: API tokens, XSRF values, credential headers and cookies.

Tornado logs a failed request's raw URL (its error line, its 500 traceback, the request's
repr); jupyter_server scrubs only its access line. ``install`` makes every record of the
process scrubbed when it is created, whichever logger, handler or formatter then writes it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REPLACEMENT = "[secret]"

# A query or form argument whose name holds "token" or "xsrf" (token, access_token, _xsrf),
# URL-encoded too (a login redirect's "next=/w/x%3Ftoken%3D...").
_ARGUMENT = re.compile(
    r"(?i)([\w.-]*(?:token|xsrf)[\w.-]*(?:=|%3D))(?!\[secret\])[^&\s'\"<>#,;)\]}]+"
)
# A credential header, as a raw header line, a dict's repr or JSON: its value up to the end
# of the quoted string or line ("Authorization: token abc", "'Cookie': 'a=b; c=d'").
_HEADER = re.compile(
    r"(?i)((?:authorization|x-xsrftoken|cookie|set-cookie)['\"]?\s*[:=]\s*['\"]?)"
    r"((?:token|bearer|basic)\s+)?[^'\"\r\n]+"
)
_traceback_formatter = logging.Formatter()


def scrub(text: str) -> str:
    """``text`` with every secret it shows replaced by ``REPLACEMENT``."""
    if "=" not in text and ":" not in text:
        return text
    text = _ARGUMENT.sub(rf"\1{REPLACEMENT}", text)
    return _HEADER.sub(rf"\1\2{REPLACEMENT}", text)


def scrub_record(record: logging.LogRecord) -> None:
    """Scrub a record in place: its message (arguments merged in), traceback and stack."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: the handler reports it, with the arguments
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # Formatters reuse exc_text instead of formatting exc_info again.
        record.exc_text = _traceback_formatter.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


def install() -> None:
    """Scrub every log record of this process from now on (once, whoever calls it)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "scrubs_secrets", False):
        return

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        scrub_record(record)
        return record

    scrubbed_record.scrubs_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbed_record)
