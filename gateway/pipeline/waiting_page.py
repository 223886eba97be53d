"""The waiting page: `GET /v1/queue/{ticket}` as a browser or an app's WebView asks for it
(`Accept` prefers `text/html`), in the customer's language.

- Waiting: the place in line and the wait, refreshing itself after `poll_after_s` with a
  `Refresh` header and a `<meta http-equiv="refresh">`, no script at all, so it runs under
  `default-src 'none'` and in any WebView. Each refresh is a poll: it keeps the place.
- Admitted: `303 See Other` back to `?return_to=` with `queue_pass` added, only when that
  URL's origin is one of `waiting_room.return_origins` (compared after parsing, never by
  prefix: no open redirect); otherwise a page saying the customer is in.
- Lapsed: a page saying so, status 410.

The page's only style is one inline block allowed by its hash in the page's own CSP.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

_STYLE = ("body{font:17px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}"
          "main{max-width:32em;margin:12vh auto;padding:1.4em 1.6em;background:#fff;"
          "border-radius:10px;box-shadow:0 1px 3px #0003}"
          "h1{font-size:1.4em;margin:0 0 .6em}"
          ".place{font-size:2.6em;font-weight:700;margin:.2em 0}"
          "p{margin:.5em 0}.quiet{color:#4b5563;font-size:.9em}"
          "@media (max-width:600px){main{margin:0;border-radius:0;min-height:100vh;"
          "box-sizing:border-box}}")
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; frame-ancestors 'none'"

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "You're in the queue",
        "place": "Your place in line",
        "wait": "Estimated wait: {eta}.",
        "paused": "Entry is paused for a moment. Your place is kept.",
        "keep": "Keep this page open: it updates by itself every {poll}.",
        "starts": "The sale starts in {starts}. Everyone who arrives before then is put in "
                  "a random order at the start, so there is no need to hurry.",
        "in_title": "You're in!",
        "in_body": "Go back to the shop to continue your order.",
        "gone_title": "Your place has lapsed",
        "gone_body": "This page was not refreshed in time, so your place was given up. Go "
                     "back to the shop and try again: you will get a new place.",
        "soon": "less than a minute", "minute": "about 1 minute",
        "minutes": "about {n} minutes", "second": "second", "seconds": "{n} seconds",
    },
    "zh-CN": {
        "title": "您正在排队",
        "place": "您当前的位置",
        "wait": "预计等待：{eta}。",
        "paused": "入场暂时暂停，您的位置会保留。",
        "keep": "请保持此页面打开，它会每{poll}自动刷新。",
        "starts": "抢购将在{starts}后开始。开始前到达的所有人会在开始时随机排序，无需抢先。",
        "in_title": "轮到您了！",
        "in_body": "请返回商店继续下单。",
        "gone_title": "您的排队位置已失效",
        "gone_body": "此页面未及时刷新，您的位置已被释放。请返回商店重试，您将获得新的位置。",
        "soon": "不到 1 分钟", "minute": "约 1 分钟", "minutes": "约 {n} 分钟",
        "second": "秒", "seconds": " {n} 秒",
    },
    "zh-Hant": {
        "title": "您正在排隊",
        "place": "您目前的位置",
        "wait": "預計等待：{eta}。",
        "paused": "入場暫時暫停，您的位置會保留。",
        "keep": "請保持此頁面開啟，它會每{poll}自動更新。",
        "starts": "搶購將在{starts}後開始。開始前到達的所有人會在開始時隨機排序，無需搶先。",
        "in_title": "輪到您了！",
        "in_body": "請返回商店繼續下單。",
        "gone_title": "您的排隊位置已失效",
        "gone_body": "此頁面未及時更新，您的位置已被釋出。請返回商店再試一次，您將取得新的位置。",
        "soon": "不到 1 分鐘", "minute": "約 1 分鐘", "minutes": "約 {n} 分鐘",
        "second": "秒", "seconds": " {n} 秒",
    },
}


def prefers_html(accept: str | None) -> bool:
    """Whether `Accept` ranks `text/html` above JSON: a browser's or a WebView's header
    (`text/html,...,*/*;q=0.8`), not an API client's (`*/*`, `application/json`)."""
    if not accept:
        return False
    html_q = json_q = 0.0
    for item in accept.split(","):
        kind, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, q)
        elif kind in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return html_q > 0 and html_q > json_q


def return_url(return_to: str | None, allowed: Collection[str], queue_pass: str) -> str | None:
    """`return_to` with `queue_pass` added, when its origin is exactly one allowed; None
    otherwise (never a redirect to anywhere else)."""
    if not return_to or not allowed:
        return None
    origin = _origin_of(return_to)
    if origin is None or origin not in {_origin_of(o) for o in allowed}:
        return None
    parts = urlsplit(return_to)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True),
                       ("queue_pass", queue_pass)])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _origin_of(url: str) -> str | None:
    """scheme://host[:port] as a browser compares origins (default port left out), or None
    for anything that is not a plain http(s) URL (userinfo, a bad port, no host)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password is not None:
        return None
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{parts.hostname}" + (
        f":{port}" if port is not None and port != default else "")


def waiting(lang: str, state: Mapping[str, Any]) -> web.Response:
    text = TEXT[lang]
    poll = int(state["poll_after_s"])
    lines = [f"<h1>{text['title']}</h1>"]
    if state.get("starts_in_s") is not None:
        starts = _countdown(lang, int(state["starts_in_s"]))
        lines.append(f"<p>{_fill(text['starts'], starts=starts)}</p>")
    elif state.get("position") is not None:
        lines += [f"<p>{text['place']}</p>", f'<p class="place">{int(state["position"])}</p>']
        if state.get("eta_s") is None:
            lines.append(f"<p>{text['paused']}</p>")
        else:
            lines.append(f"<p>{_fill(text['wait'], eta=_duration(lang, state['eta_s']))}</p>")
    every = text["second"] if poll == 1 else _fill(text["seconds"], n=str(poll))
    lines.append(f'<p class="quiet">{_fill(text["keep"], poll=every)}</p>')
    return _page(lang, text["title"], lines, 200, refresh_s=poll)


def admitted(lang: str) -> web.Response:
    text = TEXT[lang]
    return _page(lang, text["in_title"],
                 [f"<h1>{text['in_title']}</h1>", f"<p>{text['in_body']}</p>"], 200)


def lapsed(lang: str) -> web.Response:
    text = TEXT[lang]
    return _page(lang, text["gone_title"],
                 [f"<h1>{text['gone_title']}</h1>", f"<p>{text['gone_body']}</p>"], 410)


def back_to(url: str) -> web.Response:
    return web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})


def _duration(lang: str, seconds: float) -> str:
    text = TEXT[lang]
    if seconds < 60:
        return text["soon"]
    minutes = round(seconds / 60)
    return text["minute"] if minutes == 1 else _fill(text["minutes"], n=str(minutes))


def _countdown(lang: str, seconds: int) -> str:
    """The time to a sale's start: to the second in its last minute, as a countdown is."""
    if seconds >= 60:
        return _duration(lang, seconds)
    return TEXT[lang]["seconds"].format(n=seconds)


def _fill(template: str, **values: str) -> str:
    return html.escape(template.format(**values), quote=False)


def _page(lang: str, title: str, body: list[str], status: int,
          refresh_s: int | None = None) -> web.Response:
    refresh = "" if refresh_s is None else f'<meta http-equiv="refresh" content="{refresh_s}">'
    document = (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"{refresh}<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
                f"<body><main>{''.join(body)}</main></body></html>")
    headers = {"Content-Security-Policy": CSP, "Content-Language": lang,
               "Cache-Control": "no-store", "Vary": "Accept, Accept-Language"}
    if refresh_s is not None:
        headers["Refresh"] = str(refresh_s)
    return web.Response(status=status, text=document, content_type="text/html",
                        headers=headers)
