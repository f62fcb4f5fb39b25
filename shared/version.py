"""The edgepub version stamped on publishes (created_on_version) and shown by the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("edgepub")
except PackageNotFoundError:  # running from a source tree without an install
    VERSION = "0.0.0+source"
