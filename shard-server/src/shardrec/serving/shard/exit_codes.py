"""Exit codes of `shardrec-shard` that its supervisor acts on (the local runtime; kubelet just restarts)."""

import errno

# The listening port was taken (EADDRINUSE): the supervisor restarts the replica on another port
# rather than on the same one, where it would fail again for as long as the other socket lives.
EXIT_PORT_IN_USE = errno.EADDRINUSE
# The initial load of the shard failed (bad layout, checksum mismatch): restarting will not help
# until the layout changes; the supervisor backs off.
EXIT_LOAD_FAILED = 2
