"""``python -m gateway.cli_main``: the CLI without the console script."""

from gateway.cli import main

main()
