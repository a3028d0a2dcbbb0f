"""Operating the fleet: inspection (status, stuck keys, dead letters), metrics, the exporter,
JSON logs and the dashboard. Nothing here runs on a worker's hot path except the counters of
``workshaper.ops.metrics``."""
