import click


@click.command("draw")
def command() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
