"""`python -m rbee` runs the CLI."""

from rbee.cli.main import main

raise SystemExit(main())
