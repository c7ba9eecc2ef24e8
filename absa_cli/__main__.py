"""``python -m absa_cli`` is the ``absa`` command."""

from absa_cli.cli.app import main

main()
