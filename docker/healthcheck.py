"""Container health check of a streamrec worker (the images' HEALTHCHECK).

Exit 0 when ``GET /health`` on the worker's web port answers 200 (catalogue loaded, ready to
serve), 1 otherwise (503 while loading, or nothing listening). Standard library only, so it
starts fast and needs nothing beyond the image's Python. The port is ``STREAMREC_WEB_PORT``
(the variable the worker reads too), or the first argument.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    port = argv[0] if argv else os.environ.get("STREAMREC_WEB_PORT", "6066")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            print(f"{url}: {resp.status} {resp.read(300).decode(errors='replace')}")
            return 0
    except urllib.error.HTTPError as exc:  # 503: up, but the catalogue is not loaded yet
        print(f"{url}: {exc.code} {exc.read(300).decode(errors='replace')}")
        return 1
    except OSError as exc:
        print(f"{url}: no answer ({exc})")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
