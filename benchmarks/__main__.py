"""``python -m benchmarks``: the side-by-side benchmark runner (see run.py)."""

from benchmarks.run import main

raise SystemExit(main())
