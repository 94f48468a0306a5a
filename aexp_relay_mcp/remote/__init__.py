"""The remote side, pure: what the login node runs and how its output is read.

``quoting`` (the one ``quote()``), ``script`` (the remote script and its markers),
``output`` (cutting output at the markers), ``parsing`` (git and wandb output -> values),
``failures`` (git's words -> error kinds) and ``ops`` (the whitelist registry). Runs no
process and knows nothing of ssh.
"""
