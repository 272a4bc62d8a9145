"""Train the learned critic's weights: ``python -m assessor.train_embedded [--help]``.

The entry point; the work is in ``assessor.learned.train``.
"""

from __future__ import annotations

from .learned.train import main

if __name__ == "__main__":
    raise SystemExit(main())
