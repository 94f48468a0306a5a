"""The command line: ``main`` (argparse and dispatch), ``surface`` (verbs, flags, exit
codes), ``render`` (human output), and one module per verb that is more than an op:
``init_command``, ``connect_command``, ``audit_command``, ``sandbox_command``."""
