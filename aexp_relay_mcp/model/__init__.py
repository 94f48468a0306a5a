"""Values every layer shares: frozen results, the error tree, ``RelayConfig``, validated
targets (host, repo, wandb dir) and text helpers. Runs no process, imports nothing of ours
from above."""
