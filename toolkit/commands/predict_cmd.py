import click


@click.command("predict")
def command() -> None:
    """(not implemented yet)"""
    raise click.ClickException("not implemented yet")
