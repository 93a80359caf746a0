"""``python3 -m cpframe ...`` runs the command line (works before a console-script shim exists)."""

from cpframe.cli import main

main(prog_name="cpframe")
