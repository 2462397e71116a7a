"""What goes out on the wire: the request URL, the User-Agent, and the X-Robots-Tag opt-out.

Pure functions of their inputs, so the fetch path and its tests share one
reading of a raw URL and of a response's opt-out headers.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from zhclip.filters.urls import idna_host
from zhclip.pipeline.core.reasons import INVALID_URL, SCHEME_NOT_ALLOWED, tagged


def user_agent(token: str | None) -> str:
    """User-Agent naming the crawler's token, so sites can address it in X-Robots-Tag."""
    base = "Mozilla/5.0 (compatible; img2dataset"
    return f"{base}; {token})" if token else f"{base})"


def robots_tag_disallows(headers, token: str | None, directives: set[str] | None) -> bool:
    """True if an ``X-Robots-Tag`` header (for everyone or for ``token``) opts out."""
    if not directives:
        return False
    for value in headers.get_all("X-Robots-Tag", []) or []:
        agent, sep, rest = value.partition(":")
        target = agent.strip().lower() if sep else None
        listed = rest if sep else value
        if target is not None and " " in target:
            # "noindex, nofollow: x" is not an agent prefix; read the whole value.
            target, listed = None, value
        if target not in (None, token):
            continue
        if any(d.strip().lower() in directives for d in listed.split(",")):
            return True
    return False


def request_url(url: object, schemes: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(URL to send, None) or (None, tagged reason): the one place a raw URL is parsed.

    The host goes out in its IDNA form (例子.测试 -> xn--fsqu00a.xn--0zwm56d),
    userinfo is dropped (a crawler sends no credentials, and ``user@`` is a
    classic way to disguise the real host), and non-ASCII in the path or query
    is percent-encoded, since HTTP request lines are ASCII.
    """
    if not isinstance(url, str) or not url.strip():
        return None, tagged(INVALID_URL, f"url is {url!r}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as err:
        return None, tagged(INVALID_URL, f"{url!r} does not parse: {err}")
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        return None, tagged(
            SCHEME_NOT_ALLOWED, f"scheme {scheme!r} is not in filters.urls.schemes {list(schemes)}"
        )
    if scheme == "file":
        return url, None
    if not host:
        return None, tagged(INVALID_URL, f"{url!r} has no host")
    bracketed = "[" in parts.netloc
    ascii_host = idna_host(f"[{host}]" if bracketed else host)
    if ascii_host is None:
        return None, tagged(INVALID_URL, f"host {host!r} of {url!r} has no valid IDNA form")
    netloc = ascii_host if port is None else f"{ascii_host}:{port}"
    safe = "/%:@!$&'()*+,;=-._~?"
    try:
        path, query = quote(parts.path, safe=safe), quote(parts.query, safe=safe)
    except UnicodeError as err:  # a lone surrogate has no UTF-8 form
        return None, tagged(INVALID_URL, f"{url!r} cannot be percent-encoded: {err}")
    return urlunsplit((scheme, netloc, path or "/", query, "")), None
