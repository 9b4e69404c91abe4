"""pysandbox: a sandboxing OCI runtime. The layers live in the sub-packages."""

__version__ = "0.1.0"
OCI_VERSION = "1.2.0"
