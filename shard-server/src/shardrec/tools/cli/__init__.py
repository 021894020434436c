"""`recctl`: the command line of shardrec. Each subcommand group lives in its own module."""
