"""The command line: one module per command, each thin; heavy imports happen inside the commands."""
