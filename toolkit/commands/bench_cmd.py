import click


@click.command("bench")
def command() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
