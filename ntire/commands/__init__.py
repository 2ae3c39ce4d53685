"""One module per `ntire` subcommand.

Each module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and imports
only the standard library at module level so `ntire --help` stays instant; heavy imports (torch,
ray, mlflow) happen inside `run`.
"""
