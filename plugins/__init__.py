"""medtune's built-in plugins, one sub-package per kind; registered by ``builtin``."""
