"""The hive: the model store and the worker processes of one machine."""
