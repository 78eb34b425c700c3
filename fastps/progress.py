"""The terminal progress bar of ``fastps train``: two phases, so that the rate and the ETA
count training only.

``fit`` reports ``{"updates", "total", "started"}`` about 20 times a second (and evaluation
records with "accuracy"). While the learners set up (processes spawn, import torch, load the
data), "started" is False: the bar shows "starting learners" with the time spent and no rate.
At the first record with "started" True the bar is reset (its clock too), so the ETA is
(total - updates) / the training rate, not polluted by the start-up seconds.
"""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """A tqdm bar fed with fit's progress records (``bar(record)``); ``close()`` when done."""

    def __init__(self, *, file: Any = None, **tqdm_kwargs: Any) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=None, unit="upd", dynamic_ncols=True, mininterval=0.2,
                         file=sys.stderr if file is None else file, **tqdm_kwargs)  # fmt: skip
        self._bar.set_description_str("starting learners")
        self.training = False

    @property
    def bar(self) -> Any:
        """The tqdm bar (for tests: ``bar.n``, ``bar.total``, ``bar.format_dict``)."""
        return self._bar

    def __call__(self, rec: dict[str, Any]) -> None:
        bar = self._bar
        if "accuracy" in rec:
            bar.set_postfix(acc=f"{rec['accuracy']:.3f}", loss=f"{rec['loss']:.3f}",
                            tau=f"{rec['staleness_mean']:.2f}")  # fmt: skip
            return
        if not self.training:
            if not rec.get("started", True):
                bar.refresh()  # the start-up clock goes on; no rate, no ETA
                return
            self.training = True
            postfix = bar.postfix
            bar.reset(total=rec.get("total"))  # the clock restarts with the learners
            # A resumed run starts at the checkpoint's count: the rate counts from there.
            bar.initial = bar.n = bar.last_print_n = rec["updates"]
            bar.set_description_str("training")
            if postfix:
                bar.set_postfix_str(postfix)
        if rec.get("total") != bar.total:
            bar.total = rec.get("total")
            bar.refresh()
        if rec["updates"] != bar.n:
            bar.update(rec["updates"] - bar.n)

    def close(self) -> None:
        self._bar.close()


__all__ = ["ProgressBar"]
