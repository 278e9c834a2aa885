"""Progress bars that cost nothing when switched off."""
from __future__ import annotations

import sys


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _bar(*, total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


# ============================================================================================
# the streamrec adapter
# ============================================================================================


