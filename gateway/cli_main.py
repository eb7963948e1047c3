"""``python -m gateway.cli_main``: the CLI without the console script.

Guarded: with ``server.workers`` > 1, uvicorn spawns each worker as a new process that imports this
module again (as ``__mp_main__``); unguarded, every worker would run the CLI again instead of serving.
"""

from gateway.cli import main

if __name__ == "__main__":
    main()
