"""What every command group shares: the root command, the consoles, the --config option, loading
config.yaml and the database, printing problems and tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from sqlalchemy import Engine

    from gateway.config import Config


app = typer.Typer(
    help="ExecAI Gateway: an OpenAI-compatible LLM gateway with EU compliance policies.",
    no_args_is_help=True,
    add_completion=False,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Operator config file. Default: $GATEWAY_CONFIG or ./config.yaml."),
]


def _invalid(exc: ConfigError) -> NoReturn:
    """Print each problem as ``error file:line: dotted.path: reason`` and exit 2."""
    for problem in exc.problems:
        err.print(f"[red]error[/red] {escape(problem)}", highlight=False)
    raise typer.Exit(2) from None


def _config(path: Path | None) -> Config:
    from gateway.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _invalid(exc)


def _engine(path: Path | None) -> Engine:
    from gateway.store.db import make_engine, upgrade

    config = _config(path)
    upgrade(config.storage.database_url)
    return make_engine(config.storage.database_url)


def _config_path(path: Path | None) -> Path:
    from gateway.config import DEFAULT_CONFIG

    return Path(path or os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))


def _minute(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at else ""


def _print_columns(header: list[str], rows: list[list[str]]) -> None:
    """Aligned plain columns, the same in a terminal and in a pipe: nothing is cut or wrapped (a long line
    is the terminal's to wrap), an empty cell reads ``-``, so ids can be copied and ``awk`` can split."""
    table = [header, *([cell or "-" for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _print_json(rows: list[dict[str, Any]]) -> None:
    import orjson

    print(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())


def _pseudonymiser(path: Path | None) -> Callable[[str], str]:
    from gateway.identity import pseudonymiser

    return pseudonymiser(_config(path).server.secret_key)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]
