"""Keeping the explorer's choices for the next start: the part of
:class:`~pis_tui.tui.app.PisApp` that saves choices which computed once they have rested
``save_delay`` seconds (in a worker, through the backend's cache), never rewrites what the
last save wrote, and at quit writes on the spot what is still waiting.

A mixin: the app sets up ``save_delay``, ``_save_timer``, ``_unsaved`` and
``_saved_choices``.
"""

from __future__ import annotations

from textual import work

from .backend import Choices


class SaveControl:
    """Saving the choices (mixed into the app)."""

    def _schedule_save(self, choices: Choices) -> None:
        """Keep `choices` for the next start, once they have rested `save_delay` seconds
        (each re-sweep while measuring lands here too: unchanged choices are not rewritten)."""
        if choices == self._saved_choices and self._unsaved is None:
            return
        self._unsaved = choices
        if self._save_timer is not None:
            self._save_timer.stop()
        if self.save_delay <= 0:
            self._save()
        else:
            self._save_timer = self.set_timer(self.save_delay, self._save)

    def _save(self) -> None:
        if self._unsaved is not None:
            self._save_worker(self._unsaved)

    def _flush_save(self) -> None:
        """At quit: write choices still waiting for the save timer (or for a save worker
        that quitting would cancel), here and now."""
        if self._save_timer is not None:
            self._save_timer.stop()
        if self._unsaved is not None:
            choices, self._unsaved = self._unsaved, None
            try:
                self.backend.save_choices(choices, wait_s=0.5)  # quitting must not hang on a busy file
                self._saved_choices = choices
            except Exception:  # noqa: BLE001 - never a traceback at quit; choices are a convenience
                pass

    @work(thread=True, exclusive=True, group="save", exit_on_error=False)
    def _save_worker(self, choices: Choices) -> None:
        self.backend.save_choices(choices)
        self._saved_choices = choices
        if self._unsaved is choices:  # saved; unless newer choices came meanwhile
            self._unsaved = None
