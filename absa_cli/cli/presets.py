"""``absa presets list|show``: the shipped recipes."""

from __future__ import annotations

from typing import Annotated

import typer

from absa_cli.cli.common import complete_preset, user_errors

app = typer.Typer(help="List and show the preset recipes.", no_args_is_help=True)


@app.command("list")
def list_presets() -> None:
    """Each preset with its one-line description."""
    from rich.console import Console
    from rich.table import Table

    from absa_cli import config

    table = Table("preset", "description", box=None, pad_edge=False)
    for name in config.preset_names():
        table.add_row(name, config.preset_summary(name))
    Console(width=160).print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Preset name (see `absa presets list`).",
                                             autocompletion=complete_preset)],
         overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides.")] = None) -> None:
    """The fully resolved config of a preset (schema defaults < preset < overrides), as YAML."""
    from absa_cli import config

    with user_errors():
        typer.echo(config.to_yaml(config.load(name, overrides or [])), nl=False)
