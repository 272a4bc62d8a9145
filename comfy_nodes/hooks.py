"""ComfyUI's progress bar and Cancel button, as the plain callbacks ``pig.controller`` takes.

Outside ComfyUI (``comfy`` not importable) both are no-ops, so the nodes also run in plain Python.
"""

from __future__ import annotations

from collections.abc import Callable


class RoundProgress:
    """One ComfyUI progress bar over all rounds of all images of a batch."""

    def __init__(self, images: int, max_iters: int):
        self.max_iters = max(1, int(max_iters))
        self.total = max(1, images * self.max_iters)
        self.image = 0
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total)
        except ImportError:
            self._bar = None

    def start_image(self, index: int) -> None:
        self.image = index
        self._set(index * self.max_iters)

    def __call__(self, done: int, max_iters: int, record=None) -> None:
        """``pig.controller``'s progress hook: ``done`` rounds of this image are finished."""
        self._set(self.image * self.max_iters + min(max(done, 0), self.max_iters))

    def finish_image(self) -> None:
        self._set((self.image + 1) * self.max_iters)

    def _set(self, value: int) -> None:
        if self._bar is not None:
            self._bar.update_absolute(min(value, self.total), self.total)


def interrupt_check() -> Callable[[], bool]:
    """``pig.controller``'s cancellation hook. In ComfyUI it raises ComfyUI's own interruption
    exception when the user pressed Cancel, so the prompt stops the way every ComfyUI node stops."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return lambda: False

    def should_cancel() -> bool:
        mm.throw_exception_if_processing_interrupted()
        return False

    return should_cancel
