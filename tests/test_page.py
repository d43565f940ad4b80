"""The page of `toolkit serve` (GET /) in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium; no browser is downloaded), against a real server process on 127.0.0.1.

Strokes are MNIST test digits drawn with the browser's own mouse events on the 280x280 canvas, as the Tk
pad's tests draw them; what is checked is what the page shows (label, bars, the model's view), against
`toolkit predict` run on the canvas saved as a PNG and on the same strokes painted by Pillow.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from serve_process import Server, model  # noqa: F401 (fixture: the tiny trained model as digits.onnx)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
CANVAS = 280
SCALE = CANVAS // 28
BRUSH_RADIUS = 8  # the page's and the Tk pad's brush
TOKEN = "page-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("TOOLKIT_REQUIRE_DISPLAY_TESTS"):  # CI installs them; skipping there would hide a gap
            pytest.fail("chromium and chromium-driver are required here (TOOLKIT_REQUIRE_DISPLAY_TESTS is set)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=660,680", "--force-device-scale-factor=1", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with Server([model, "--max-batch", "4"], tmp_path_factory.mktemp("log"), grpc=False) as s:
        yield s


@pytest.fixture(scope="module")
def digits(mnist, model):
    """Strokes: two MNIST test digits the tiny model reads with >= 99% confidence, and a hand-drawn 5."""
    from toolkit.runtime import Predictor

    predictor = Predictor.open(model, "cpu", threads=1)
    images, labels = mnist.test_images[:500], mnist.test_labels[:500]
    probs = predictor.probabilities(images)
    chosen = {}
    for i in np.flatnonzero((probs.argmax(1) == labels) & (probs.max(1) >= 0.99)):
        chosen.setdefault(int(labels[i]), images[i])
    picked = [list(strokes(chosen[k])) for k in (2, 7) if k in chosen]
    assert len(picked) == 2, f"the tiny model is confident on classes {sorted(chosen)} only"
    return picked + [handwritten_five()]


def strokes(digit: np.ndarray, threshold: int = 128):
    """The digit's ink as horizontal strokes through pixel centres, upscaled to the canvas (as test_draw.py)."""
    for r, row in enumerate(digit >= threshold):
        c = 0
        while c < 28:
            if row[c]:
                start = c
                while c < 28 and row[c]:
                    c += 1
                yield [(x * SCALE + SCALE // 2, r * SCALE + SCALE // 2) for x in range(start, c)]
            c += 1


def handwritten_five() -> list[list[tuple[int, int]]]:
    """A 5 as a hand draws it: the top bar, then one continuous stroke down and round the belly."""
    bar = [(x, 62) for x in range(204, 106, -6)]
    down = [(108 - i // 2, 62 + 6 * i) for i in range(14)]
    belly = [(round(148 + 58 * np.cos(t)), round(190 + 58 * np.sin(t))) for t in np.radians(np.arange(-125, 150, 7))]
    return [bar, down + belly]


def draw_with_mouse(driver, canvas, lines: list) -> None:
    """Real mouse events from the browser's input pipeline (W3C actions), one press-move-release per stroke."""
    actions = ActionChains(driver, duration=0)
    for stroke in lines:
        # W3C pointer offsets are from the element's centre
        actions.move_to_element_with_offset(canvas, stroke[0][0] - CANVAS // 2, stroke[0][1] - CANVAS // 2)
        actions.click_and_hold()
        for x, y in stroke[1:]:
            actions.move_to_element_with_offset(canvas, x - CANVAS // 2, y - CANVAS // 2)
        actions.release()
    actions.perform()


def painted_by_pillow(lines: list) -> bytes:
    """The same strokes painted by Pillow as the Tk pad paints them: a dab, then joined segments."""
    image = Image.new("L", (CANVAS, CANVAS), 0)
    pen = ImageDraw.Draw(image)
    r = BRUSH_RADIUS
    for stroke in lines:
        x, y = stroke[0]
        pen.ellipse([x - r, y - r, x + r, y + r], fill=255)
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
            pen.line([x0, y0, x1, y1], fill=255, width=2 * r)
            pen.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=255)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def settled(driver, answered_more_than: int = -1, timeout: float = 30.0) -> None:
    """Wait until the page shows the answer for the drawing on the canvas (no request pending)."""
    def done(d):
        canvas = d.find_element(By.ID, "canvas")
        return (canvas.get_attribute("data-state") == "settled"
                and int(canvas.get_attribute("data-answered") or 0) > answered_more_than)

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(done)


def shown(driver) -> dict:
    """What the pad shows: headline, each class's bar width (fraction) and percentage text, the view image."""
    bars = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#bars .bar"):
        track = row.find_element(By.CSS_SELECTOR, ".track").size["width"] - 2  # its 1 px border
        fill = row.find_element(By.CSS_SELECTOR, ".fill").size["width"]
        bars.append((row.find_element(By.CSS_SELECTOR, ".name").text, fill / track,
                     row.find_element(By.CSS_SELECTOR, ".pct").text))
    src = driver.find_element(By.ID, "view").get_attribute("src") or ""
    return {"label": driver.find_element(By.ID, "label").text, "bars": bars, "view": src,
            "where": driver.find_element(By.ID, "where").text,
            "status": driver.find_element(By.ID, "status").text}


def canvas_png(driver) -> bytes:
    url = driver.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def predict_file(png: bytes, model: Path, folder: Path, name: str) -> dict:
    """`toolkit predict` on one PNG file: its JSONL row."""
    path = folder / f"{name}.png"
    path.write_bytes(png)
    out = folder / f"{name}.jsonl"
    result = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(path), "--model", str(model),
                             "--provider", "cpu", "-o", str(out), "--top-k", "10"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text().splitlines()[0])


def open_pad(driver, server) -> None:
    driver.get(f"http://{server.url}/")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "pad").is_displayed()
                                    or d.find_element(By.ID, "token-form").is_displayed())


def test_mouse_strokes_give_the_label_predict_gives_the_same_strokes(browser, server, model, digits, tmp_path,
                                                                     artifacts_dir):
    from toolkit.predict import prepare

    open_pad(browser, server)
    canvas = browser.find_element(By.ID, "canvas")
    assert canvas.size == {"width": CANVAS, "height": CANVAS}
    assert browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height]") \
        == [CANVAS, CANVAS]
    first = shown(browser)
    assert first["label"] == "draw a digit" and first["view"] == ""
    assert first["where"] == "model digits · digit · cpu"  # which model, which provider
    assert [name for name, _, _ in first["bars"]] == [str(i) for i in range(10)]
    assert all(width == 0 and pct == "" for _, width, pct in first["bars"])

    for n, digit in enumerate(digits):
        browser.find_element(By.ID, "clear").click()
        settled(browser)
        before = int(canvas.get_attribute("data-answered"))
        draw_with_mouse(browser, canvas, digit)
        settled(browser, before)
        page = shown(browser)
        png = canvas_png(browser)
        row = predict_file(png, model, tmp_path, f"canvas-{n}")
        pillow = predict_file(painted_by_pillow(digit), model, tmp_path, f"pillow-{n}")
        # The headline and the bars are predict's label and probabilities for the very canvas the browser drew.
        assert page["label"] == f"Prediction: {row['label']} ({100 * row['confidence']:.1f}%)", (page, row)
        probs = {top["label"]: top["probability"] for top in row["top_k"]}
        for name, width, pct in page["bars"]:
            assert pct == f"{100 * probs[name]:.1f}%"
            assert width == pytest.approx(probs[name], abs=2 / 150)  # whole pixels of a 150 px track
        # The same strokes painted by Pillow (the Tk pad's way) get the same label: the browser drew them.
        assert pillow["label"] == row["label"], (pillow, row)
        # The view is the model's input: predict's preprocessing of the canvas, pixel for pixel.
        view = np.asarray(Image.open(io.BytesIO(base64.b64decode(page["view"].split(",", 1)[1]))))
        np.testing.assert_array_equal(view, prepare(png))
        assert page["status"].startswith("cpu · ") and page["status"].endswith(" ms")
        if n == len(digits) - 1:  # the hand-drawn 5: the README's picture
            browser.find_element(By.TAG_NAME, "body").screenshot(str(artifacts_dir / "serve_page.png"))

    browser.find_element(By.TAG_NAME, "body").send_keys("c")  # the pad's key: clear
    settled(browser)
    cleared = shown(browser)
    assert cleared["label"] == "draw a digit" and all(pct == "" for _, _, pct in cleared["bars"])
    assert not np.asarray(Image.open(io.BytesIO(canvas_png(browser))).convert("L")).any()


def test_with_a_token_file_the_page_asks_for_the_token_once(browser, model, digits, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with Server([model, "--token-file", token_file], tmp_path, grpc=False) as server:
        # The page itself is static and open; what it shows needs the token.
        assert server.get("/")[0] == 200
        assert server.get("/page/models")[0] == 401
        assert server.post("/v2/models/digits/classify", painted_by_pillow(digits[0]))[0] == 401
        open_pad(browser, server)  # a new port, a new origin: nothing stored for it yet
        form = browser.find_element(By.ID, "token-form")
        assert form.is_displayed() and not browser.find_element(By.ID, "pad").is_displayed()

        browser.find_element(By.ID, "token").send_keys("wrong-token-0123456789")
        browser.find_element(By.ID, "token-send").click()
        WebDriverWait(browser, 30).until(lambda d: "refused" in d.find_element(By.ID, "token-reason").text)
        assert form.is_displayed()

        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "token-send").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "pad").is_displayed())
        canvas = browser.find_element(By.ID, "canvas")
        for digit in digits[:2]:
            browser.find_element(By.ID, "clear").click()
            settled(browser)
            before = int(canvas.get_attribute("data-answered"))
            draw_with_mouse(browser, canvas, digit)
            settled(browser, before)
            assert shown(browser)["label"].startswith("Prediction: ")
            assert not form.is_displayed()  # asked once: every later request carries it
        browser.refresh()  # the tab keeps it: no second question after a reload
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "pad").is_displayed())
        assert not browser.find_element(By.ID, "token-form").is_displayed()


def test_the_page_fetches_nothing_from_elsewhere(browser, server):
    """Every resource the page loads comes from the server itself (no CDN), under a strict CSP."""
    open_pad(browser, server)
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert names and all(n.startswith(f"http://{server.url}/") for n in names), names
    status, body, headers = server.get("/")
    assert status == 200 and b'src="/page/pad.js"' in body
    assert "default-src 'none'" in headers["content-security-policy"]
    for path in ("/page/pad.js", "/page/pad.css"):
        assert server.get(path)[0] == 200
    assert server.get("/page/nope.js")[0] == 404
