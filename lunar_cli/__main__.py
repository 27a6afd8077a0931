"""``python -m lunar_cli`` runs the same app as the ``lunar`` executable."""

from lunar_cli.cli import main

main()
