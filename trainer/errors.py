"""Errors the trainer raises for bad input: each message names the file, user or value and what would work."""
from tweetgen.errors import TweetgenError


class DataError(TweetgenError):
    """Tweets that cannot be read or used: a malformed file, a missing column, nothing left after cleaning."""


class ArchiveError(DataError):
    """An X archive (zip, folder or tweets.js) that cannot be read safely or holds no tweets."""


class XApiError(DataError):
    """The X API refused or failed a request in a way that retrying will not fix."""
