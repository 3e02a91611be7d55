"""`python -m crys_pipeline` entry point (same as the `crys-pipeline` console script)."""

from crys_pipeline.cli import main

raise SystemExit(main())
