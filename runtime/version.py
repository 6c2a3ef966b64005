"""The installed tweetgen's version (its distribution's metadata), for --version and the files an export writes."""

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("tweetgen")
    except metadata.PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"
