"""A screenshot of the chat page of a running ``subterra serve``, for the README.

    python -m bench.screenshot_chat http://127.0.0.1:8000 mini_booking docs/chat.png

Opens the page in headless Chromium (Debian's, at /usr/bin/chromium), picks the workflow, chats
until the conversation ends (at most ``--turns`` turns) and saves the whole page as a PNG. Each
message is the one the step the conversation is at asks for (``--reply NODE=TEXT``; by default
a booking to Lisbon that is then cancelled, for ``mini_booking``), else the ``--message`` ones in
turn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPLIES = {  # the step the conversation is at -> what the user says there (mini_booking's steps)
    "": "I'd like to go to Lisbon.",  # the first message
    "greet": "I'd like to go to Lisbon.",
    "ask_date": "On 2027-03-14.",
    "ask_count": "Cancel everything.",
    "confirm": "No thanks.",
}
FALLBACK = ["Cancel everything."]


def chat(page, base_url: str, workflow: str, replies: dict[str, str], messages: list[str], turns: int,
         api_key: str | None = None) -> list[dict]:
    """Chats on the page until the conversation ends or ``turns`` turns; returns each turn's form
    as the page shows it (``node``, the ``current`` node of the flowchart, ``ended``)."""
    if api_key:  # the page keeps the key in sessionStorage; set it before the page's script runs
        page.add_init_script(f"sessionStorage.setItem('subterra.apiKey', {api_key!r});")
    page.goto(base_url.rstrip("/") + "/")
    page.wait_for_selector(f"#workflow option[value='{workflow}']", state="attached")
    page.select_option("#workflow", workflow)
    page.wait_for_selector("#flowchart g.node")
    forms, node = [], ""
    for turn in range(turns):
        text = replies.get(node) or messages[turn % len(messages)]
        page.fill("#message", text)
        page.click("#send")
        page.wait_for_function(
            "n => document.querySelectorAll('#transcript .msg.assistant:not(.pending)').length >= n"
            " || !document.getElementById('error').hidden", arg=turn + 1)
        if page.is_visible("#error"):
            raise RuntimeError("the page shows an error: " + page.inner_text("#error"))
        node = page.inner_text("#form-node")
        current = page.eval_on_selector_all("#flowchart g.node.current", "gs => gs.map(g => g.dataset.node)")
        forms.append({"message": text, "node": node, "current": current, "ended": page.is_visible("#ended")})
        if forms[-1]["ended"]:
            break
    return forms


def screenshot(base_url: str, workflow: str, out: Path, replies: dict[str, str] = REPLIES,
               messages: list[str] = FALLBACK, turns: int = 12, api_key: str | None = None,
               size: tuple[int, int] = (1360, 900)) -> list[dict]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            forms = chat(page, base_url, workflow, replies, messages, turns, api_key)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return forms


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="where subterra serve listens, e.g. http://127.0.0.1:8000")
    parser.add_argument("workflow", help="the workflow id to chat with")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--reply", action="append", default=[], metavar="NODE=TEXT",
                        help="what to say at a step (replaces the mini_booking defaults; repeatable)")
    parser.add_argument("--message", action="append", default=[], help="what to say at other steps, in turn (repeatable)")
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--api-key", help="the server's API key, if it has one")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    replies = dict(r.split("=", 1) for r in args.reply) if args.reply else REPLIES
    forms = screenshot(args.base_url, args.workflow, args.out, replies, args.message or FALLBACK, args.turns, args.api_key)
    for i, form in enumerate(forms, 1):
        print(f"turn {i}: {form['message']!r} -> {form['node']}{' (ended)' if form['ended'] else ''}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
