# `python -m mendstream`: the same command line as the `mendstream` console script (mendstream.cli).
from mendstream.cli import main

raise SystemExit(main())
