"""Errors a user can fix. The CLI prints their message alone (no traceback) and exits non-zero;
each message names the bad value and what would be accepted."""


class UserError(Exception):
    """Base of every error caused by input rather than by a bug."""


class ConfigError(UserError, ValueError):
    """A parameter value that cannot be used."""


class DataError(UserError, ValueError):
    """Data that cannot be used as given; names the file, folder or split."""


class WeightsError(UserError, ValueError):
    """A weights file that does not fit the network."""


class OfflineError(UserError, ConnectionError):
    """The network is needed but unreachable; the message lists the offline options."""


class ServerUnreachable(UserError, ConnectionError):
    """A server the command needs (a tracking server, a Ray cluster) did not answer within a few
    seconds; names its address and what to do."""


class DiskError(UserError, OSError):
    """A folder that cannot be written, or a disk that is full: names the path (and the space
    needed where known)."""
