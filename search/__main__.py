"""``python -m search``: the same as the ``medseg-search`` command."""

from search.cli import main

raise SystemExit(main())
