"""`rbee sweep`: a cron-friendly health sweep of the whole fleet, straight over SSH.

The modules, in the order a sweep uses them:

- `options`: the command line (a usage error exits 3, UNKNOWN, as Nagios plugins do);
- `probe`: one POSIX sh script per hive, one round trip, no Python start-up there;
- `queen_view`: what the queen says (health, workers, hives, /metrics), if one answers;
- `expect`: what should run (the queen's desired state, and whether the queen should serve);
- `hive_checks`, `queen_checks`: pure functions from what was seen to `Check`s;
- `memory`: the previous sweep, kept in the state dir, and what changed since;
- `report`: the table, the Nagios line with perfdata, the JSON (`schema.json`);
- `textfile`: `rbee_sweep.prom` for node_exporter's textfile collector;
- `heal`: what `--heal` does about what the checks found;
- `cron`: `--install-cron` / `--uninstall-cron`;
- `run`: the sweep itself, every hive at once, each with its own deadline.
"""
