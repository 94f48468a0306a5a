"""How bytes reach the login node: processes and sockets. Knows ssh, not git.

``transport`` is the one interface the relay uses: it picks a route per call (a native
session on the shared connection, an ssh client through it, or a direct login). Below
it: ``masters`` (shared connections), ``mux`` (OpenSSH's multiplexing protocol),
``runner`` (the async process runner), ``procs`` (the process table), and the pure
``argv``, ``remote_kill`` and ``failures``.
"""
