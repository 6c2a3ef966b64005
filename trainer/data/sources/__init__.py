"""Where tweets come from: X archives, the X API v2, and plain files; each gives `trainer.records.Tweet` records."""
