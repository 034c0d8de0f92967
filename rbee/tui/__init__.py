"""The Textual dashboard (`rbee tui`): talks to the queen's API only.

`client` is its async client of the queen, `view` decides every row from the queen's snapshots
(pure), `app` shows them and runs the keys' actions, `screens` holds its dialogs, `text` prints
a snapshot for `--once`, `trust` records hive host keys.
"""
