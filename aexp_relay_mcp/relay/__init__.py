"""The relay: one call's life from request to audit line, over the ssh transport.

``client`` (``RelayClient``, the API the adapters use) dispatches each request to one
of three peer flows, ``repo_ops`` (the git ops), ``status_check`` and ``wandb_sync``
(the consent op). What they share of a call's life lies below them: ``call_runner``
(open, target, execute, result, end), ``call`` (one call: audit lines, remote group,
kills), ``diagnose`` (output -> errors) and ``audit`` (the log).
"""
