"""Console: what the terminal shows while work runs: `progress` (a line per step with its duration) and
`quiet` (the toolchains' own log lines hidden unless `--verbose`)."""
