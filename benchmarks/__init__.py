"""tweetgen's runtime measured against the engines a user could pick instead, on the same model (README.md)."""
