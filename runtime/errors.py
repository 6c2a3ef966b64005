"""Errors raised by tweetgen for bad input; each message names the problem and what is allowed."""


class TweetgenError(Exception):
    """Base class of every error tweetgen raises for bad input or a bad model folder."""
