"""The dashboard in a real Chromium (Debian's, driven by Playwright) against `gateway serve` and
`gateway run` as an operator starts them: sign in, text a simulated carrier and see it sent,
a reply dropped into the mailbox appearing in the open thread without a reload, a hostile
reply shown as text, a setting changed and the next text using it.

GATEWAY_TEST_SCREENSHOTS=DIR also saves pictures of the main pages there (docs/screenshots)."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.services.carrier_sim import free_port
from gateway.store import access
from gateway.store.db import make_engine, utcnow
from gateway.transport.mailsource import deliver_to_maildir
from tests.conftest import gateway_folder

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
PHONE, ADDRESS = "+12025550143", "2025550143@vtext.com"
# Each would set window.hacked if the page ever treated a reply as markup; the htmx one would
# make the page fetch on its own (htmx processes attributes of anything inserted).
HOSTILE = "\n".join([
    "<script>window.hacked=1</script>",
    '<img src=x onerror="window.hacked=2"> tap javascript:alert(1)',
    '<svg onload="window.hacked=3"><circle r="1"/></svg>',
    '<iframe srcdoc="<script>parent.hacked=4</script>"></iframe>',
    '<a href="javascript:window.hacked=5">open</a>',
    '"><body onload="window.hacked=6">',
    "<math><mtext><table><mglyph><style><img src=x onerror=window.hacked=7>",
    "{{constructor.constructor('window.hacked=8')()}}",
    '<div hx-get="/logout" hx-trigger="load">x</div>',
    "<style>body{display:none}</style>",
])  # fmt: skip
INJECTED = (
    "#messages li.in :is(script, img, svg, iframe, style, math, body, a[href^='javascript'], "
    "[onload], [onerror], [hx-get])"
)


def _browser_or_skip() -> None:
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is not installed (Debian package chromium; `make test` installs it)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("GATEWAY_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


class Gateway:
    """`gateway serve` and `gateway run` in a working folder, as two processes."""

    def __init__(self, folder: Path, own: int, relay: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.maildir = folder / "Maildir"
        gateway_folder(
            folder,
            own,
            extra=(
                'from_address = "Dispatch <dispatch@example.com>"\n'
                f'[relay]\nenabled = true\nhost = "127.0.0.1"\nport = {relay}\n'
                'security = "none"\nfrom_address = "Dispatch via relay <relay@example.net>"\n'
                f'[inbound]\nmaildir = "{self.maildir}"\n'
                f"[web]\nport = {self.port}\n"
                "[sender]\nidle_poll_seconds = 0.1\n"
                "[policy]\nquiet_hours = false\n"
            ),
        )
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(f"sqlite:///{folder / 'gw.db'}")
        access.add_user(self.engine, "dana", "dispatcher", PASSWORD, utcnow())
        access.add_user(self.engine, "ada", "admin", PASSWORD, utcnow())
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.processes = [self._start(command, env) for command in ("serve", "run")]
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, self.logs()
                time.sleep(0.2)

    def _start(self, command: str, env: dict[str, str]) -> subprocess.Popen:
        with open(self.folder / f"{command}.log", "wb") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", "gateway", command],
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def reply(self, message_id: str, text: str) -> None:
        raw = (
            (
                f"From: {ADDRESS}\r\nTo: dispatch@example.com\r\nSubject: Re:\r\n"
                f"Message-ID: <{uuid.uuid4().hex}@vtext.com>\r\nIn-Reply-To: {message_id}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            ).encode()
            + text.encode()
            + b"\r\n"
        )
        deliver_to_maildir(self.maildir, raw, f"{time.time():.6f}.{uuid.uuid4().hex}.test")

    def ready(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:  # 503 until a worker is heard from
            return None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.folder.glob("*.log"))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.engine.dispose()


@pytest.fixture
def gateway(tmp_path, smtp_server, relay_server) -> Iterator[Gateway]:
    _browser_or_skip()
    running = Gateway(tmp_path, smtp_server.port, relay_server.port)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser():
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            yield chromium
        finally:
            chromium.close()


def wait_for(check, what: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sign_in(page, gateway: Gateway, name: str) -> None:
    page.goto(f"{gateway.url}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/conversations")


def shoot(page, name: str) -> None:
    folder = os.environ.get("GATEWAY_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        # caret="initial": hiding the caret injects a <style>, which the page's CSP refuses.
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False, caret="initial")


def test_a_dispatcher_day_in_the_browser(gateway, browser, smtp_server, relay_server):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # A CSP violation (an inline script or style the policy refused) is logged as an error.
    page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    page.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    sign_in(page, gateway, "dana")
    # `gateway run` is heard from: ready, reading its Maildir.
    ready = wait_for(
        lambda: (r := gateway.ready()) and r["mailbox_lag_seconds"] is not None and r,
        "/readyz to report the worker and its mailbox",
    )
    assert ready["workers"] == 1 and ready["mailbox_lag_seconds"] < 5

    # A text to a simulated carrier: queued, then sent by the own server, seen without reload.
    page.click("text=New text")
    page.fill("input[name=to]", PHONE)
    page.select_option("select[name=carrier]", "verizon")
    page.fill("#draft", "Your driver is 10 minutes away")
    page.wait_for_selector("#counter >> text=30 characters")
    page.click("button:has-text('Send')")
    page.wait_for_url("**/conversations/*")
    page.evaluate("window.sameDocument = true")
    page.wait_for_selector("#messages li.out .state.sent", timeout=20_000)
    sent = wait_for(lambda: smtp_server.received, "the own server to receive the text")
    assert sent[0].rcpt_tos == [ADDRESS]
    message_id = email.message_from_bytes(sent[0].content)["Message-ID"]

    # A reply dropped into the mailbox shows up in the open thread, no reload.
    gateway.reply(message_id, "Thanks, gate code is 4411")
    page.wait_for_selector("#messages li.in >> text=Thanks, gate code is 4411", timeout=20_000)
    # The conversation list follows too (its refresh waits 300 ms to take bursts at once).
    page.wait_for_selector("[data-live-list] >> text=Thanks, gate code is 4411", timeout=10_000)
    assert page.evaluate("window.sameDocument") is True
    shoot(page, "conversations")

    # A hostile reply is text on the screen, and nothing of it runs.
    gateway.reply(message_id, HOSTILE)
    item = page.wait_for_selector("#messages li.in >> text=window.hacked", timeout=20_000)
    shown = item.inner_text()
    for payload in HOSTILE.split("\n"):
        assert payload.split(">")[0] in shown  # each one there, as the characters it is
    assert page.evaluate("window.hacked") is None
    assert page.locator(INJECTED).count() == 0
    assert page.evaluate("window.sameDocument") is True
    assert errors == []

    # An admin switches the own server off; the next text goes by the relay.
    admin = browser.new_page(viewport={"width": 1280, "height": 900})
    admin.on("console", lambda m: m.type == "error" and errors.append(f"admin: {m.text}"))
    sign_in(admin, gateway, "ada")
    admin.goto(f"{gateway.url}/settings")
    admin.click("#smtp button:has-text('Test connection')")
    admin.wait_for_selector("#test-smtp li.ok >> text=EHLO")
    shoot(admin, "settings")
    admin.uncheck("#smtp input[name='smtp.enabled']")
    admin.click("#smtp button:has-text('Save')")
    admin.wait_for_selector(".notice >> text=smtp.enabled")
    assert "smtp.enabled" in admin.inner_text("#audit")
    # `gateway run` looks for saved changes every 2 s and says when it takes one up.
    wait_for(lambda: "settings changed in the dashboard" in gateway.logs(),
             "gateway run to take up the change", 60)  # fmt: skip

    page.fill("#draft", "Second text, after the change")
    page.press("#draft", "Control+Enter")  # the keyboard sends it, as the button would
    page.wait_for_selector("#messages li.out:last-child .state.sent", timeout=30_000)
    assert "by relay" in page.inner_text("#messages li.out:last-child")
    relayed = wait_for(lambda: relay_server.received, "the relay to receive the text")
    assert b"Second text, after the change" in relayed[0].content
    assert len(smtp_server.received) == 1

    for path, name in (("/failures", "failures"), ("/orders", "orders"),
                       ("/carriers", "carriers"), ("/carriers#providers", "providers"),
                       ("/contacts", "contacts")):  # fmt: skip
        admin.goto(f"{gateway.url}{path}")
        shoot(admin, name)
    assert errors == [], errors


def test_cancelling_a_waiting_text_asks_first(gateway, browser):
    """What cannot be taken back asks first: a dispatcher who clicks Cancel on a waiting order
    text and says no keeps it; saying yes cancels it. Tags in the list fit their words."""
    import datetime as dt

    from sqlalchemy import select

    from gateway.config import load_settings
    from gateway.services.outbound import SendRequest, enqueue
    from gateway.services.runtime import Runtime
    from gateway.store.tables import messages

    runtime = Runtime(load_settings(gateway.folder / "gateway.toml"))
    tomorrow = utcnow() + dt.timedelta(days=1)
    [text] = enqueue(runtime, SendRequest(PHONE, "verizon", text="Your order arrives tomorrow",
                                          order_ref="C-1", send_at=tomorrow), utcnow()).ids  # fmt: skip

    def state() -> str:
        with runtime.engine.connect() as conn:
            return conn.execute(select(messages.c.state).where(messages.c.id == text)).scalar_one()

    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    sign_in(page, gateway, "dana")
    # The order's tag in the list is as wide as its words, not stretched across the row.
    tag = page.wait_for_selector("ul.conversations .tag.order >> text=C-1").bounding_box()
    row = page.locator("ul.conversations li").first.bounding_box()
    assert tag["width"] < row["width"] / 4, (tag, row)
    page.goto(f"{gateway.url}/orders/C-1")
    asked: list[str] = []

    def answer(dialog, yes: bool) -> None:
        asked.append(dialog.message)
        dialog.accept() if yes else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.click("button:has-text('Cancel')")
    wait_for(lambda: asked, "the question")
    assert "Cancel this text to +12025550143" in asked[0] and state() == "queued"
    page.once("dialog", lambda d: answer(d, True))
    page.click("button:has-text('Cancel')")
    wait_for(lambda: state() == "cancelled", "the text cancelled once the dispatcher says yes")
    assert len(asked) == 2 and errors == []


def test_the_keyboard_moves_between_conversations(gateway, browser):
    from gateway.config import load_settings
    from gateway.services.outbound import SendRequest, enqueue
    from gateway.services.runtime import Runtime

    runtime = Runtime(load_settings(gateway.folder / "gateway.toml"))
    for phone in ("+12025550143", "+12025550144", "+12025550145"):
        enqueue(runtime, SendRequest(phone, "verizon", text="Out for delivery"), utcnow())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, gateway, "dana")
    links = page.locator("ul.conversations li > a")
    wait_for(lambda: links.count() == 3, "three conversations listed")
    order = [links.nth(n).get_attribute("href").split("?")[0] for n in range(3)]
    page.goto(f"{gateway.url}{order[0]}")
    page.keyboard.press("Alt+ArrowDown")
    page.wait_for_url(f"**{order[1]}?*")
    page.focus("#draft")  # from the text being typed too
    page.keyboard.press("Alt+ArrowDown")
    page.wait_for_url(f"**{order[2]}?*")
    page.keyboard.press("Alt+ArrowUp")
    page.wait_for_url(f"**{order[1]}?*")


PHONE_SCREEN = {"width": 390, "height": 844}
DESK_SCREEN = {"width": 1440, "height": 900}
# How far a page reaches past the screen's right edge (0 when it fits), and the widest element
# that does, to say which one.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  let widest = null, reach = width;
  for (const el of document.querySelectorAll("body *")) {
    const right = el.getBoundingClientRect().right;
    if (right > reach + 0.5 && el.offsetParent !== null) { reach = right; widest = el; }
  }
  const scroll = document.documentElement.scrollWidth - width;
  const name = widest ? widest.tagName.toLowerCase() + (widest.className ? "." + widest.className : "") : "";
  return {scroll: scroll, reach: Math.round(reach - width), widest: name};
}"""


def _seed_pages(gateway: Gateway) -> dict[str, str]:
    """Texts, an order, a failure and a reply, so every page has rows to lay out."""
    from sqlalchemy import select

    from gateway.config import load_settings
    from gateway.services.orders import OrderInput, Orders
    from gateway.services.outbound import SendRequest, enqueue
    from gateway.services.runtime import Runtime
    from gateway.store import views
    from gateway.store.tables import contacts

    runtime = Runtime(load_settings(gateway.folder / "gateway.toml"))
    long_words = "Please-call-the-back-office-about-the-gate-code-before-you-arrive " * 3
    text = enqueue(runtime, SendRequest(PHONE, "verizon", text=long_words, order_ref="L-1",
                                        name="Ana Lopez-Fernández"), utcnow()).ids[0]  # fmt: skip
    Orders(runtime).upsert(OrderInput(ref="L-2", customer="+12025550199", carrier="verizon",
                                      customer_name="Ben"), utcnow())  # fmt: skip
    enqueue(runtime, SendRequest("+4915123456789", text="to nowhere"), utcnow())  # not sent
    with runtime.engine.connect() as conn:
        thread = views.message(conn, text)["conversation_id"]
        contact = conn.execute(select(contacts.c.id)).scalars().first()
    return {
        "conversations": "/conversations",
        "thread": f"/conversations/{thread}",
        "compose": "/compose",
        "failures": "/failures",
        "orders": "/orders",
        "order": "/orders/L-1",
        "contacts": "/contacts",
        "contact": f"/contacts/{contact}",
        "carriers": "/carriers",
        "settings": "/settings",
    }


@pytest.mark.parametrize("screen", [PHONE_SCREEN, DESK_SCREEN], ids=["phone", "desk"])
def test_every_page_fits_the_screen(gateway, browser, screen):
    """No page scrolls sideways, on a phone (390 px) or a desk (1440 px)."""
    pages = _seed_pages(gateway)
    page = browser.new_page(viewport=screen, is_mobile=screen is PHONE_SCREEN,
                            has_touch=screen is PHONE_SCREEN)  # fmt: skip
    page.goto(f"{gateway.url}/login")
    misfits = {}
    found = page.evaluate(OVERFLOW)
    if found["scroll"] > 0:
        misfits["login"] = found
    sign_in(page, gateway, "ada")
    for name, path in pages.items():
        page.goto(f"{gateway.url}{path}")
        page.wait_for_load_state("networkidle")
        found = page.evaluate(OVERFLOW)
        if found["scroll"] > 0:
            misfits[name] = found
        if screen is PHONE_SCREEN and name in ("conversations", "thread", "failures"):
            shoot(page, f"phone-{name}")
    assert misfits == {}
    if screen is PHONE_SCREEN:  # the header's links fold under Menu, and open from it
        page.goto(f"{gateway.url}/conversations")
        assert not page.is_visible("header.top nav")
        page.click("header.top .menu-toggle")
        assert page.is_visible("header.top nav >> text=Failures")
        shoot(page, "phone-menu")


# Stands in for the browser's Notification (a headless browser shows none): records what the
# page shows, and when it asks for permission.
FAKE_NOTIFICATION = """
window.__notified = []; window.__asked = 0;
class FakeNotification {
  constructor(title, options) { window.__notified.push({title: title, body: (options || {}).body}); }
  static requestPermission() {
    window.__asked += 1; FakeNotification.permission = "granted"; return Promise.resolve("granted");
  }
}
FakeNotification.permission = "default";
window.Notification = FakeNotification;
"""


def test_two_dispatchers_share_the_inbox_live(gateway, browser, smtp_server):
    """Dana leaves a conversation to Dave; Dave's "mine" shows it without a reload; a reply
    in it tells Dave (tab title, notification he switched on, never asked for on load); Dana
    marks it done and it leaves Dave's list."""
    from gateway.config import load_settings
    from gateway.services.outbound import SendRequest, enqueue
    from gateway.services.runtime import Runtime

    access.add_user(gateway.engine, "dave", "dispatcher", PASSWORD, utcnow())
    runtime = Runtime(load_settings(gateway.folder / "gateway.toml"))
    enqueue(runtime, SendRequest(PHONE, "verizon", text="Your parcel is on the way", name="Ana"),
            utcnow())  # fmt: skip
    sent = wait_for(lambda: smtp_server.received, "the text sent")
    message_id = email.message_from_bytes(sent[0].content)["Message-ID"]
    errors: list[str] = []
    pages = {}
    for name, screen in (("dana", DESK_SCREEN), ("dave", PHONE_SCREEN)):
        context = browser.new_context(viewport=screen)
        context.add_init_script(FAKE_NOTIFICATION)
        page = context.new_page()
        page.on(
            "console", lambda m, who=name: m.type == "error" and errors.append(f"{who}: {m.text}")
        )
        sign_in(page, gateway, name)
        pages[name] = page
    dana, dave = pages["dana"], pages["dave"]
    dave.goto(f"{gateway.url}/conversations?show=mine")
    dave.wait_for_selector("text=No conversations match")
    assert dave.evaluate("window.__asked") == 0  # nothing asked on load
    dave.click("#notify-toggle")
    dave.wait_for_selector("#notify-toggle[aria-pressed=true]")
    assert dave.evaluate("window.__asked") == 1

    dana.click("ul.conversations a >> text=Ana")
    dana.wait_for_selector("#thread select[name=to]")
    dana.select_option("#thread select[name=to]", label="dave")
    dana.wait_for_selector("#thread select[name=to] option[selected] >> text=dave",
                           state="attached")  # fmt: skip
    # Dave's list hears of it from the event stream.
    dave.wait_for_selector("ul.conversations >> text=Ana", timeout=20_000)

    gateway.reply(message_id, "Can you leave it at the back door?")
    wait_for(lambda: dave.title().startswith("(1) "), "the unread count in Dave's tab title")
    notified = wait_for(lambda: dave.evaluate("window.__notified"), "Dave's notification")
    assert notified == [{"title": "New reply", "body": "Can you leave it at the back door?"}]

    dana.wait_for_selector("#messages li.in >> text=back door", timeout=20_000)
    dana.click("#thread button:has-text('Mark done')")
    dana.wait_for_selector("#thread button:has-text('Reopen')")
    dave.wait_for_selector("text=No conversations match", timeout=20_000)
    assert errors == []


@pytest.mark.parametrize("screen", [PHONE_SCREEN, DESK_SCREEN], ids=["phone", "desk"])
def test_search_one_thread_and_quick_replies(gateway, browser, screen):
    """Parts 2, 3 and 6 at both widths: an order text and a plain text to one person are one
    thread; search finds it by the number as written on a note and by a word, and opens the
    thread at the text; a quick reply asks for the value the thread lacks and fills the draft."""
    from gateway.config import load_settings
    from gateway.services.outbound import SendRequest, enqueue
    from gateway.services.runtime import Runtime

    runtime = Runtime(load_settings(gateway.folder / "gateway.toml"))
    for text, order in (("Your order is confirmed", "Q-1"), ("The gate code is 4411", None)):
        enqueue(runtime, SendRequest(PHONE, "verizon", text=text, order_ref=order,
                                     name="Ana Lopez"), utcnow())  # fmt: skip
    errors: list[str] = []
    admin = browser.new_page(viewport=DESK_SCREEN)
    admin.on("console", lambda m: m.type == "error" and errors.append(f"admin: {m.text}"))
    sign_in(admin, gateway, "ada")
    admin.goto(f"{gateway.url}/settings#quick-replies")
    admin.fill("#quick-replies input[name=name]", "arrival")
    admin.fill("#quick-replies input[name=text]", "Hi {{ first_name }}, we arrive at {{ eta }}.")
    admin.click("#quick-replies button:has-text('Add quick reply')")
    admin.wait_for_selector("#quick-replies >> text=arrival")

    phone = screen is PHONE_SCREEN
    page = browser.new_page(viewport=screen, is_mobile=phone, has_touch=phone)
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    sign_in(page, gateway, "dana")
    assert page.locator("ul.conversations > li").count() == 1  # one person, one thread
    page.fill("input[type=search]", "(202) 555-0143")
    page.press("input[type=search]", "Enter")
    page.wait_for_selector("ul.hits >> text=Ana Lopez")
    page.fill("input[type=search]", "gate")
    page.press("input[type=search]", "Enter")
    hit = page.wait_for_selector("ul.hits li a:has(mark)")
    assert page.inner_text("ul.hits mark") == "gate"
    shoot(page, "phone-search" if phone else "search")
    hit.click()
    page.wait_for_url("**/conversations/*#m-*")
    target = page.url.rsplit("#", 1)[1]
    assert "The gate code is 4411" in page.inner_text(f"#{target}")
    assert "Q-1" in page.inner_text("#messages")  # the order text, in the same thread
    page.select_option("select[name=reply]", label="arrival")
    page.wait_for_selector("#ask input[name=var_eta]")
    page.fill("#ask input[name=var_eta]", "14:30")
    page.click("#ask button:has-text('Fill in')")
    wait_for(lambda: page.input_value("#draft") == "Hi Ana, we arrive at 14:30.", "the draft")
    assert page.evaluate(OVERFLOW)["scroll"] <= 0
    assert errors == []
