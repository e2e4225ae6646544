"""Put on PYTHONPATH of a test's child processes: `import pandas` fails there, as in a
production install (pandas is only the `bench` extra and the test venv's).

pyarrow imports pandas on its first `pa.array(...)` when it is installed: ~1-1.5 s and ~37 MB per
process. Dagster runs, code servers, the webserver, the daemon and CLI subprocesses each paid it
in the suite, for a library the product never uses.
"""

from __future__ import annotations

import importlib.abc
import sys


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoPandas())
