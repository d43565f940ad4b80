"""The seed's digit pad, running on the exported ONNX model.

A 280x280 black canvas with a white brush, as in the seed notebook. Every stroke
is painted twice: on the Tk canvas for the eye and into a PIL "L" image for the
model. That image goes through the same ``to_model_pixels`` as `toolkit predict`
(a digit model: ink box scaled to 20x20, centred by centre of mass in 28x28; an
image model: the canvas is an image, resized and cropped by its own pipeline),
then through the ONNX ``Predictor``. Torch is never imported here.

Tk is imported inside functions so that importing this module (and
`toolkit --help`) stays cheap and works on machines without Tk.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from .errors import DisplayUnavailable, NonFiniteOutput
from .preprocess import to_model_pixels
from .runtime import Predictor

CANVAS_SIZE = 280
BRUSH_RADIUS = 8  # the seed's brush: at 280 px it gives strokes about as thick as MNIST's
DEBOUNCE_MS = 120
EMPTY_TEXT = "draw a digit"
PREVIEW_SCALE = 3  # the 28x28 model input shown at 84x84

BAR_ROW = 26
BAR_LABEL_W = 26
BAR_MAX_W = 150
BAR_TEXT_W = 58
BAR_COLOR = "#4a7fc1"
BAR_TOP_COLOR = "#2ca02c"

# Without a periodic timer, tkinter's mainloop blocks inside Tcl waiting for an X
# event, so Ctrl-C in the terminal would only be noticed after the next mouse move.
HEARTBEAT_MS = 200


def open_window(title: str = "toolkit draw"):
    """A Tk root window, or DisplayUnavailable with the reason in one line."""
    if sys.platform not in ("win32", "darwin") and not os.environ.get("DISPLAY"):
        raise DisplayUnavailable("no display: `toolkit draw` needs a graphical session (DISPLAY is not set)")
    try:
        import tkinter as tk
    except ImportError as e:
        raise DisplayUnavailable(f"this Python has no Tk support ({e}); install python3-tk") from None
    try:
        root = tk.Tk(className="toolkit")
    except tk.TclError as e:
        reason = " ".join(str(e).split())
        raise DisplayUnavailable(f"cannot open the display {os.environ.get('DISPLAY', '')!r}: {reason}") from None
    root.title(title)
    return root


class DrawApp:
    """The pad's widgets and handlers. Handlers take any object with ``.x``/``.y``,
    so a real Tk event and a test's synthetic one follow the same path."""

    def __init__(self, root, predictor: Predictor, radius: int = BRUSH_RADIUS, debounce_ms: int = DEBOUNCE_MS):
        import tkinter as tk

        self.root = root
        self.predictor = predictor
        self.classes = list(predictor.classes)
        self.radius = radius
        self.debounce_ms = debounce_ms
        self.pending = None  # id of the scheduled debounced prediction
        self.last = None  # previous pointer position within the current stroke
        self.predictions = 0
        self.probabilities: np.ndarray | None = None
        self.closed = False
        self.ticker = None

        self.image = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE), color=0)
        self.pen = ImageDraw.Draw(self.image)

        self.canvas = tk.Canvas(root, width=CANVAS_SIZE, height=CANVAS_SIZE, bg="black",
                                highlightthickness=0, cursor="pencil")
        self.canvas.grid(row=0, column=0, rowspan=3, padx=8, pady=8, sticky="n")

        # Fixed width (in characters) so the window does not jump as the text changes.
        self.label = tk.Label(root, text=EMPTY_TEXT, font=("DejaVu Sans", 15, "bold"), width=20, anchor="w")
        self.label.grid(row=0, column=1, sticky="w", padx=(0, 8), pady=(8, 0))

        n = len(self.classes)
        self.bars = tk.Canvas(root, width=BAR_LABEL_W + BAR_MAX_W + BAR_TEXT_W, height=n * BAR_ROW,
                              highlightthickness=0)
        self.bars.grid(row=1, column=1, sticky="nw", padx=(0, 8))
        self.bar_items = []
        for i, name in enumerate(self.classes):
            y0, y1 = i * BAR_ROW + 4, (i + 1) * BAR_ROW - 4
            self.bars.create_text(BAR_LABEL_W - 8, (y0 + y1) / 2, text=name, anchor="e", font=("DejaVu Sans", 11))
            self.bars.create_rectangle(BAR_LABEL_W, y0, BAR_LABEL_W + BAR_MAX_W, y1, outline="#c8c8c8")
            bar = self.bars.create_rectangle(BAR_LABEL_W, y0, BAR_LABEL_W, y1, fill=BAR_COLOR, width=0)
            pct = self.bars.create_text(BAR_LABEL_W + BAR_MAX_W + 6, (y0 + y1) / 2, text="", anchor="w",
                                        font=("DejaVu Sans Mono", 10))
            self.bar_items.append((bar, pct))

        side = tk.Frame(root)
        side.grid(row=2, column=1, sticky="sw", padx=(0, 8), pady=(0, 8))
        # What the model actually sees: makes the MNIST-style scaling and centring visible.
        spec = predictor.contract.preprocess
        self.scale = max(1, PREVIEW_SCALE * 28 // max(spec.height, spec.width, 28))  # previews of big inputs stay small
        self.preview_image = tk.PhotoImage(width=spec.width * self.scale, height=spec.height * self.scale)
        self.preview = tk.Label(side, image=self.preview_image, bg="black", bd=1, relief="sunken")
        self.preview.grid(row=0, column=0, rowspan=2, padx=(0, 8))
        tk.Label(side, text=f"model input\n{spec.width} x {spec.height}", justify="left", fg="#555555").grid(row=0, column=1, sticky="nw")
        self.status = tk.Label(side, text="", fg="#555555", justify="left", anchor="w")
        self.status.grid(row=1, column=1, sticky="sw")

        buttons = tk.Frame(root)
        buttons.grid(row=3, column=0, columnspan=2, pady=(0, 8))
        tk.Button(buttons, text="Predict", width=8, command=self.predict).pack(side="left", padx=4)
        tk.Button(buttons, text="Clear (c)", width=8, command=self.clear).pack(side="left", padx=4)
        tk.Button(buttons, text="Exit (q)", width=8, command=self.quit).pack(side="left", padx=4)

        self.canvas.bind("<ButtonPress-1>", self.on_press)
        self.canvas.bind("<B1-Motion>", self.on_motion)
        self.canvas.bind("<ButtonRelease-1>", self.on_release)
        for key in ("c", "C"):
            root.bind(f"<KeyPress-{key}>", lambda _e: self.clear())
        for key in ("q", "Q"):
            root.bind(f"<KeyPress-{key}>", lambda _e: self.quit())
        root.protocol("WM_DELETE_WINDOW", self.quit)
        root.resizable(False, False)

        self._show_empty()
        self._heartbeat()

    # ------------------------------------------------------------------ drawing

    def _dab(self, x: float, y: float) -> None:
        r = self.radius
        self.canvas.create_oval(x - r, y - r, x + r, y + r, fill="white", outline="white", tags="ink")
        self.pen.ellipse([x - r, y - r, x + r, y + r], fill=255)

    def _segment(self, x0: float, y0: float, x1: float, y1: float) -> None:
        # Motion events arrive every few pixels when the pointer moves fast; joining
        # them keeps a quick stroke continuous instead of a row of separate dots.
        r = self.radius
        self.canvas.create_line(x0, y0, x1, y1, width=2 * r, fill="white", capstyle="round", tags="ink")
        self.pen.line([x0, y0, x1, y1], fill=255, width=2 * r)
        self.pen.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=255)

    def on_press(self, event) -> None:
        self.last = (event.x, event.y)
        self._dab(event.x, event.y)
        self.schedule_predict()

    def on_motion(self, event) -> None:
        if self.last is None:  # a drag that began outside the canvas
            self._dab(event.x, event.y)
        else:
            self._segment(*self.last, event.x, event.y)
        self.last = (event.x, event.y)
        self.schedule_predict()

    def on_release(self, event) -> None:
        self.last = None
        self.predict()  # the stroke is finished: no reason to wait for the debounce

    # --------------------------------------------------------------- prediction

    def schedule_predict(self) -> None:
        """Predict once the pointer has rested for ``debounce_ms``, not on every motion event."""
        if self.pending is not None:
            self.root.after_cancel(self.pending)
        self.pending = self.root.after(self.debounce_ms, self.predict)

    def _cancel_pending(self) -> None:
        if self.pending is not None:
            self.root.after_cancel(self.pending)
            self.pending = None

    def model_pixels(self) -> np.ndarray:
        """The drawing as the model sees it: uint8 at the model's size (28x28 for MNIST), through its pipeline."""
        return to_model_pixels(np.asarray(self.image, dtype=np.uint8), self.predictor.contract.preprocess)

    def predict(self) -> None:
        self._cancel_pending()
        if self.closed:
            return
        pixels = self.model_pixels()
        digit = self.predictor.contract.preprocess.mode == "digit"
        if self.image.getbbox() is None or (digit and not pixels.any()):  # blank: a digit-mode notion
            self._show_empty()
            return
        start = time.perf_counter()
        try:
            probs = self.predictor.probabilities(pixels[None])[0]
        except NonFiniteOutput:
            # A NaN "probability" is no prediction: say so on the pad instead of drawing bars from it.
            self._show_empty()
            self.label.config(text="no prediction: model output is NaN/Inf")
            self._show_preview(pixels)
            return
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.predictions += 1
        self.probabilities = probs
        top = int(np.argmax(probs))
        self.label.config(text=f"Prediction: {self.classes[top]} ({probs[top]:.1%})")
        self._show_bars(probs, top)
        self._show_preview(pixels)
        self.status.config(text=f"{self.predictor.provider} · {elapsed_ms:.2f} ms")

    def _show_bars(self, probs, top: int | None) -> None:
        """Bar lengths and percentages; ``probs=None`` empties them."""
        for i, (bar, pct) in enumerate(self.bar_items):
            p = 0.0 if probs is None else float(probs[i])
            x0, y0, _, y1 = self.bars.coords(bar)
            self.bars.coords(bar, x0, y0, x0 + p * BAR_MAX_W, y1)
            # X draws even a zero-width rectangle as a 1 px line; hide it instead
            self.bars.itemconfigure(bar, fill=BAR_TOP_COLOR if i == top else BAR_COLOR,
                                    state="normal" if p * BAR_MAX_W >= 0.5 else "hidden")
            self.bars.itemconfigure(pct, text="" if probs is None else f"{p:6.1%}")

    def _show_preview(self, pixels: np.ndarray) -> None:
        spec = self.predictor.contract.preprocess
        if pixels.ndim == 3 and spec.channel_order == "bgr":
            pixels = pixels[..., ::-1]  # shown as the eye sees it
        big = np.repeat(np.repeat(pixels, self.scale, axis=0), self.scale, axis=1)
        h, w = big.shape[:2]
        colour = big.ndim == 3 and big.shape[2] == 3
        # Tk reads binary PGM/PPM natively, so no ImageTk (and no Pillow Tk plugin) is needed.
        self.preview_image.configure(data=(b"P6" if colour else b"P5") + b" %d %d 255\n" % (w, h)
                                     + np.ascontiguousarray(big).tobytes(), format="PPM")

    def _show_empty(self) -> None:
        self.probabilities = None
        self.label.config(text=EMPTY_TEXT)
        self._show_bars(None, None)
        spec = self.predictor.contract.preprocess
        self._show_preview(np.zeros(spec.pixel_shape, dtype=np.uint8))
        self.status.config(text=f"{self.predictor.provider}")

    # ------------------------------------------------------------------ actions

    def clear(self) -> None:
        self._cancel_pending()
        self.last = None
        self.canvas.delete("ink")
        self.image = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE), color=0)
        self.pen = ImageDraw.Draw(self.image)
        self._show_empty()

    def quit(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_pending()
        if self.ticker is not None:
            self.root.after_cancel(self.ticker)
        # Destroying the root also ends mainloop: it runs only while a main window exists.
        self.root.destroy()

    def _heartbeat(self) -> None:
        if not self.closed:
            self.ticker = self.root.after(HEARTBEAT_MS, self._heartbeat)


def run(model: str | os.PathLike = "model.onnx", provider: str = "auto", on_notice=None, flags=None) -> None:
    """Open the model, then the window, and run until the user quits.

    ``flags`` (toolkit.flags.PreprocessFlags) describe a model that carries no toolkit contract.

    The model comes first so that a bad path fails with ModelError before any
    window appears (and even where there is no display at all).
    """
    # One image at a time is ~0.1 ms; a thread pool would only add spinning threads to a GUI process.
    predictor = Predictor.open(model, provider, threads=1, flags=flags)
    root = open_window(f"toolkit draw — {os.path.basename(os.fspath(model))}")
    # Only now: without a display the user should see the one line that matters, not a provider note first.
    if predictor.notice and on_notice:
        on_notice(predictor.notice)
    app = DrawApp(root, predictor)
    try:
        root.mainloop()
    finally:
        if not app.closed:
            app.quit()
