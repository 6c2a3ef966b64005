"""Where tweets come from: X archives, the X API v2, and plain files; each gives `tweetgen.trainer.data.records.Tweet` records."""
