"""The SSH spine: one asyncssh connection per hive, argv quoting, install, port forwards."""
