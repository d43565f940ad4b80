import click


@click.command("export")
def command() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
