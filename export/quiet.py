"""Keep torch's exporter chatter (deprecation warnings, progress lines, log records) away from the user.

Every export is validated against the eager model afterwards, so what these messages warn about is
checked on the written file; what matters to the user ends up in the report, not on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# torch.onnx logs its opset fallback, onnxscript its version conversion: records, not warnings.
LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript")


@contextlib.contextmanager
def quiet_torch():
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
