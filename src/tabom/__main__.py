"""``python -m tabom``: the same as the ``tabom`` console script (:func:`tabom.cli.main`)."""

from tabom.cli import main

raise SystemExit(main())
