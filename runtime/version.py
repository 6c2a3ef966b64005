"""The installed tweetgen's version (its distribution's metadata), for --version and the files an export writes."""


def version() -> str:
    from importlib import metadata  # here, not at import: it loads the email and zipfile modules (~3 MB resident)

    try:
        return metadata.version("tweetgen")
    except metadata.PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"
