"""Build gradtape's HTML API reference from its docstrings, with pdoc.

    pip install -e ".[docs]"        # pdoc (the dev extra has it too)
    python docs/build.py            # writes docs/reference/index.html (git-ignored)
    python docs/build.py OUT_DIR    # or into OUT_DIR

It documents the public modules (``gradtape``, ``gradtape.nn``, ``gradtape.optimizers``,
``gradtape.random``, ``gradtape.testing``, ``gradtape.extend``): every public name with its
signature and docstring.
A warning from pdoc (an annotation or a docstring section it cannot read ...) is an error: the
script prints each one and exits with status 1. ``docs/api.md`` stays the hand-written,
test-checked reference; ``tests/test_docs_build.py`` builds this one into a temporary folder
and checks that every public op is listed with its signature and first docstring line.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

MODULES = ("gradtape", "gradtape.nn", "gradtape.optimizers", "gradtape.schedules", "gradtape.random",
           "gradtape.testing", "gradtape.extend", "gradtape.distributed")
DEFAULT_OUT = Path(__file__).resolve().parent / "reference"

# gradtape's __all__ names nn, optimizers and random, so pdoc reaches them from gradtape as well as from
# MODULES and says so; that one is expected (listing them keeps the build independent of __all__)
_EXPECTED = r"The module specification '.*' adds a module named .*, but a module with this name has already been added"


def build(out: Path = DEFAULT_OUT) -> Path:
    """Write the reference into ``out``; return the path of its ``index.html``.

    Raises ``RuntimeError`` listing pdoc's warnings, if it gave any (the pages are written all
    the same); ``ImportError`` when pdoc is not installed.
    """
    import pdoc  # the docs extra: optional, so imported only when building
    import pdoc.render

    pdoc.render.configure(docformat="google", show_source=False, footer_text="gradtape API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=_EXPECTED)
        pdoc.pdoc(*MODULES, output_directory=Path(out))
    if caught:
        lines = "\n".join(f"  {w.category.__name__}: {w.message}" for w in caught)
        raise RuntimeError(f"pdoc warned {len(caught)} time(s) (warnings are errors here):\n{lines}")
    return Path(out) / "index.html"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    try:
        index = build(out)
    except ImportError as exc:
        print(f"docs/build.py: pdoc is not installed ({exc}); pip install -e '.[docs]'", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # pdoc's warnings, or a module that failed to import (the cause)
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        print(f"docs/build.py: {exc}{cause}", file=sys.stderr)
        return 1
    print(f"API reference written to {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
