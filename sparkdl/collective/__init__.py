"""What workers do together over a transport: the tree, the mailbox, the deterministic allreduce. Imports nothing
from ``train`` or ``launch`` (they build on it)."""
