"""The browser page of `toolkit serve` (``GET /``): the seed's drawing pad, or an upload-or-camera page.

The page is three static files shipped as package data (toolkit/serve/page/: HTML, CSS, JS; no build
step, nothing fetched from elsewhere). They hold no model data, so they are served without the bearer
token: a browser cannot send one when it opens a URL. Everything the page shows comes from two guarded
routes, called by its script with the token it asks for once (kept in the tab's sessionStorage):

  GET  /page/models                      the served models: name, mode, classes, input size, provider
  POST /v2/models/NAME/classify?view=1   the image route of issue 20 (label, probabilities, the model's view)

A digit-mode model gets the pad (280x280 canvas, brush, clear, live probabilities per class, the model's
28x28 view); an image-mode model gets an upload-or-camera page with the top-k classes.
"""

from __future__ import annotations

from importlib import resources

MODELS_ROUTE = "/page/models"
# path -> (file in toolkit/serve/page/, content type)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/pad.css": ("pad.css", "text/css; charset=utf-8"),
    "/page/pad.js": ("pad.js", "text/javascript; charset=utf-8"),
}
# The page runs only its own script and talks only to this server; the camera's frames stay in the page.
SECURITY = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                 b"img-src 'self' data: blob:; media-src 'self' blob:; base-uri 'none'; "
                                 b"form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
_cache: dict[str, bytes] = {}


def static_file(path: str) -> tuple[int, bytes, list] | None:
    """(status, body, headers) for one of the page's files, or None when ``path`` is not one of them."""
    entry = STATIC.get(path)
    if entry is None:
        return None
    name, content_type = entry
    if name not in _cache:
        _cache[name] = resources.files(__package__).joinpath("page", name).read_bytes()
    return 200, _cache[name], [(b"content-type", content_type.encode()), *SECURITY]


def models_info(models) -> dict:
    """What the page needs of each served model (ServedModel objects), in the order they were given."""
    listed = []
    for model in models:
        predictor = model.predictor
        spec = predictor.contract.preprocess
        listed.append({
            "name": model.name,
            "mode": spec.mode,
            "classes": list(predictor.classes),
            "height": spec.height,
            "width": spec.width,
            "provider": predictor.provider,
        })
    return {"models": listed}
