"""The systems wsrelay is measured against, each run as its own server process."""
