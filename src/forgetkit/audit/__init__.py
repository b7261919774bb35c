"""The record of unlearning requests: the SQLite ledger behind ``forgetkit audit``."""
