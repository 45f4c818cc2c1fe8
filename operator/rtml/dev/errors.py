"""Errors of the local control plane; their messages are sentences meant for the user."""


class DevError(RuntimeError):
    """Base class: something the developer has to act on, explained in the message."""


class ToolsError(DevError):
    """The control plane's binaries could not be found or built."""


class ControlPlaneError(DevError):
    """The local control plane could not be started, reached or stopped."""
